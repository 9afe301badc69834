"""Preflight: what can be pruned in a model, how, and how far.

Torch-Pruning's dependency graph finds the coupled groups (residual additions,
concatenation, depthwise and grouped convolutions, BatchNorm, attention). Each group is
named by its root layer. Every weight-carrying layer belongs to exactly one entry, so a
Schedule keyed by entry names covers the model without overlaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoprune._errors import PreflightError

__all__ = ["LayerInfo", "ModelAnalysis", "analyse", "prunable_layers", "ROOT_TYPES"]

ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MultiheadAttention)
# Normalisation layers follow their group; they are never pruned on their own.
_FOLLOWER_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


@dataclass(frozen=True)
class LayerInfo:
    """One prunable unit: a coupled group (named by its root layer) or a lone layer.

    Attributes:
        name: the root layer's path; the key to use in a Schedule.
        type: class name of the root layer.
        members: layers whose output channels are removed together with the root's.
        weights: ``(layer path, parameter name)`` of every weight that unstructured pruning
            of this entry touches.
        channels: output channels of the group (0 for a lone layer).
        channel_groups: channels are removed in multiples of this (heads, groups).
        params: number of weights in ``weights``.
        methods: the methods that apply (``structured``, ``unstructured``).
        max_amount: largest safe structured amount (keeps at least one channel per channel
            group); for unstructured-only entries the largest unstructured amount.
        reason: why structured pruning does not apply, when it does not.
    """

    name: str
    type: str
    members: tuple[str, ...]
    weights: tuple[tuple[str, str], ...]
    channels: int
    channel_groups: int
    params: int
    methods: tuple[str, ...]
    max_amount: float
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "members": list(self.members),
            "channels": self.channels,
            "channel_groups": self.channel_groups,
            "params": self.params,
            "methods": list(self.methods),
            "max_amount": self.max_amount,
            "reason": self.reason,
        }


@dataclass
class ModelAnalysis:
    """The full preflight result, plus the handles the executor needs."""

    layers: list[LayerInfo]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    num_heads: dict[str, int] = field(default_factory=dict)

    def by_member(self) -> dict[str, LayerInfo]:
        """Any member layer path -> its entry (so a Schedule may name any member)."""
        out: dict[str, LayerInfo] = {}
        for info in self.layers:
            out[info.name] = info
            for m in info.members:
                out.setdefault(m, info)
            for w, _ in info.weights:
                out.setdefault(w, info)
        return out


def _weights_of(module: nn.Module) -> list[str]:
    if isinstance(module, nn.MultiheadAttention):
        return ["in_proj_weight"] if module.in_proj_weight is not None else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    if isinstance(module, ROOT_TYPES) and getattr(module, "weight", None) is not None:
        return ["weight"]
    return []


def build_graph(model: nn.Module, example_inputs: Any) -> Any:
    """Trace ``model`` with Torch-Pruning, turning any failure into a PreflightError."""
    import torch_pruning as tp

    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means the same to the user
        raise PreflightError(
            f"cannot trace {type(model).__name__} with the given example inputs: {type(exc).__name__}: {exc}"
        ) from exc


def analyse(model: nn.Module, example_inputs: Any) -> ModelAnalysis:
    """Analyse ``model``: its prunable groups, lone layers and what was skipped and why."""
    was_training = model.training
    model.eval()
    try:
        graph = build_graph(model, example_inputs)
    finally:
        model.train(was_training)
    names = {m: n for n, m in model.named_modules()}
    analysis = ModelAnalysis(layers=[])
    covered: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            analysis.num_heads[name] = module.num_heads

    for group in graph.get_all_groups(root_module_types=ROOT_TYPES):
        root = group[0][0].target.module
        root_name = names.get(root)
        if root_name is None:
            continue
        members: list[str] = []
        output_coupled = False
        ch_groups = 1
        for dep, _ in group:
            target = dep.target.module
            if not graph.is_out_channel_pruning_fn(dep.handler):
                continue
            node = graph.module2node.get(target)
            if node is not None and len(node.outputs) == 0:
                output_coupled = True
            tname = names.get(target)
            if tname is None or not isinstance(target, ROOT_TYPES + _FOLLOWER_TYPES):
                continue
            if tname not in members:
                members.append(tname)
            if isinstance(target, nn.MultiheadAttention):
                ch_groups = max(ch_groups, target.num_heads)
            elif isinstance(target, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and 1 < target.groups < target.out_channels:
                ch_groups = max(ch_groups, target.groups)
        weights: list[tuple[str, str]] = []
        for m in members:
            mod = model.get_submodule(m)
            weights += [(m, p) for p in _weights_of(mod)]
            if isinstance(mod, nn.MultiheadAttention):
                weights.append((f"{m}.out_proj", "weight"))
        weights = [w for w in weights if w[0] not in covered]
        covered.update(w for w, _ in weights)
        covered.update(members)
        channels = int(graph.get_out_channels(root) or 0)
        params = sum(model.get_submodule(w).get_parameter(p).numel() for w, p in weights)
        if output_coupled:
            methods: tuple[str, ...] = ("unstructured",) if weights else ()
            reason: str | None = "its output channels are the model's output"
            max_amount = 0.99
        elif channels <= ch_groups:
            methods, reason, max_amount = ("unstructured",), "only one channel per channel group", 0.99
        else:
            methods, reason = ("structured", "unstructured"), None
            max_amount = math.floor((1 - ch_groups / channels) * 100) / 100
        analysis.layers.append(
            LayerInfo(
                name=root_name,
                type=type(root).__name__,
                members=tuple(members),
                weights=tuple(weights),
                channels=channels,
                channel_groups=ch_groups,
                params=params,
                methods=methods,
                max_amount=max_amount,
                reason=reason,
            )
        )

    # Layers with weights that no group covers: custom modules, untraced branches.
    for name, module in model.named_modules():
        if name in covered or name == "":
            continue
        own = [(n, p) for n, p in module.named_parameters(recurse=False)]
        if not own:
            continue
        parent_is_mha = any(
            isinstance(model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model, nn.MultiheadAttention)
            for _ in [0]
        )
        if parent_is_mha or isinstance(module, _FOLLOWER_TYPES):
            continue
        wnames = _weights_of(module)
        if isinstance(module, ROOT_TYPES) and wnames:
            reason = "not reached when tracing the model with the example inputs"
            if module not in graph.module2node:
                reason = "not used in the traced forward pass"
            analysis.layers.append(
                LayerInfo(
                    name=name,
                    type=type(module).__name__,
                    members=(name,),
                    weights=tuple((name, p) for p in wnames),
                    channels=0,
                    channel_groups=1,
                    params=sum(module.get_parameter(p).numel() for p in wnames),
                    methods=("unstructured",),
                    max_amount=0.99,
                    reason=f"structured pruning not possible: {reason}",
                )
            )
        else:
            kind = "unwrapped parameter(s)" if not isinstance(module, ROOT_TYPES) else "no weight"
            pnames = ", ".join(n for n, _ in own)
            analysis.skipped.append(
                (name, f"{type(module).__name__} with {kind} {pnames}: no Torch-Pruning handler, left as is")
            )
    analysis.layers.sort(key=lambda i: list(names.values()).index(i.name))
    return analysis


def prunable_layers(model: nn.Module, example_inputs: Any) -> list[LayerInfo]:
    """List each prunable layer or coupled group with its methods and largest safe amount.

    Layers that cannot be pruned structurally appear with ``methods == ("unstructured",)``
    and the reason; parameters that cannot be pruned at all appear with empty ``methods``.

    Example:
        >>> import autoprune as ap
        >>> model, x = ap.zoo.get("cnn")
        >>> [i.name for i in ap.prunable_layers(model, x)][:2]
        ['features.0.0', 'features.1.0']
    """
    analysis = analyse(model, example_inputs)
    skipped = [
        LayerInfo(name=n, type="", members=(n,), weights=(), channels=0, channel_groups=1, params=0,
                  methods=(), max_amount=0.0, reason=r)
        for n, r in analysis.skipped
    ]
    return analysis.layers + skipped
