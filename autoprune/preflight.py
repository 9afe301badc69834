"""Preflight: what can be pruned in a model, how, and how far.

Torch-Pruning's dependency graph finds the coupled groups (residual additions,
concatenation, depthwise and grouped convolutions, BatchNorm, attention). Each group is
named by its root layer. Every weight-carrying layer belongs to exactly one entry, so a
Schedule keyed by entry names covers the model without overlaps.

This module reads the graph and never prunes; :func:`autoprune.prunable_layers`
(``autoprune/prunable.py``) adds the check that each group's largest safe amount survives
the executor's surgery.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoprune import _attention
from autoprune._errors import PreflightError
from autoprune._inputs import call_model, select_output
from autoprune._tp import torch_pruning

__all__ = ["LayerInfo", "ModelAnalysis", "analyse", "ROOT_TYPES"]

_logger = logging.getLogger(__name__)

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
    nn.Embedding,  # token embeddings carry the residual width (BERT, GPT-2); never pruned alone
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
        heads: attention heads of the attention layers in the group (``nn.MultiheadAttention``
            or q/k/v projections of a module with a head count); 0 when it holds none, or when
            whole heads cannot be removed (a per-head parameter such as Swin's relative
            position bias table). ``Schedule(attention_heads=True)`` removes whole heads.
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
    heads: int = 0

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
            "heads": self.heads,
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
    conv1d = _attention.conv1d_type()
    if conv1d is not None and isinstance(module, conv1d):
        return ["weight"]
    if isinstance(module, nn.MultiheadAttention):
        return (
            ["in_proj_weight"]
            if module.in_proj_weight is not None
            else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
        )
    if isinstance(module, ROOT_TYPES) and getattr(module, "weight", None) is not None:
        return ["weight"]
    return []


def tracer_options(model: nn.Module, output: str | int | None = None) -> dict[str, Any]:
    """Keyword arguments for Torch-Pruning's tracer and pruners, the same in preflight and executor.

    The graph is traced from every tensor the model returns, so a model may return a dict, a
    ``ModelOutput`` or a tuple (non-tensor entries such as caches are left out); ``output``
    names the scored one, which must exist (checked by :func:`check_runs`). Class and
    position tokens get their width dimension named; GPT-2's ``Conv1D`` gets a pruner.
    """
    torch_pruning()  # imported by the one helper first
    from torch_pruning._helpers import UnwrappedParameters

    params = dict(model.named_parameters())
    unwrapped = [
        UnwrappedParameters(parameters=params[n], pruning_dim=dim) for n, dim in _attention.token_parameters(model).items()
    ]
    return {
        "output_transform": _output_tensors,
        "unwrapped_parameters": unwrapped,
        "customized_pruners": _attention.customized_pruners(model),
    }


def _output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor a model returned (dicts, ``ModelOutput``, tuples; caches and strings are
    not tensors and are left out): each one's width is the model's, and every branch that
    leads to one couples channels."""
    if isinstance(output, torch.Tensor):
        return [output]
    if hasattr(output, "keys") and hasattr(output, "get"):
        return [t for k in output.keys() for t in _output_tensors(output[k])]
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in _output_tensors(o)]
    return []


def root_types(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """:data:`ROOT_TYPES`, plus GPT-2's ``Conv1D`` when the model has one."""
    conv1d = _attention.conv1d_type()
    if conv1d is not None and any(isinstance(m, conv1d) for m in model.modules()):
        return ROOT_TYPES + (conv1d,)
    return ROOT_TYPES


def check_runs(model: nn.Module, example_inputs: Any, output: str | int | None = None) -> None:
    """Run ``model`` once on its inputs, so that a wrong input or an output with nothing to
    score is reported as such rather than as an error from deep inside the tracer."""
    name = type(model).__name__
    try:
        with torch.no_grad():
            out = call_model(model, example_inputs)  # Torch-Pruning's tracer calls it the same way
    except Exception as exc:  # noqa: BLE001 - any failure here means the same to the user
        raise PreflightError(
            f"cannot run {name} on the example inputs ({_describe(example_inputs)}): {type(exc).__name__}: {exc}"
        ) from exc
    try:
        select_output(out, output)
    except ValueError as exc:
        raise PreflightError(
            f"cannot trace {name}: its forward must return a tensor (or a tuple, list, dict or ModelOutput holding "
            f"one) for Torch-Pruning to follow the autograd graph, but it returned {type(out).__name__} ({exc})"
        ) from exc


def build_graph(model: nn.Module, example_inputs: Any, output: str | int | None = None) -> Any:
    """Trace ``model`` with Torch-Pruning (after :func:`check_runs`), turning any failure into a
    PreflightError."""
    tp = torch_pruning()

    try:
        with torch.enable_grad(), warnings.catch_warnings(), _attention.per_head_parameters_frozen(model):
            # Unwrapped parameters are reported by preflight itself, with their layer; unknown
            # ops are treated as element-wise, which is what they are in the zoo models.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            warnings.filterwarnings("ignore", message=r"\[Warning\] Unknown operation")
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, **tracer_options(model, output)
            )
    except Exception as exc:  # noqa: BLE001 - any tracing failure means the same to the user
        raise PreflightError(
            f"cannot trace {type(model).__name__} with Torch-Pruning (it follows the autograd graph of one forward "
            f"pass; data-dependent Python control flow, non-tensor outputs or detached tensors break it): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _describe(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return f"tensor of shape {tuple(inputs.shape)}"
    if isinstance(inputs, (tuple, list)):
        return f"{type(inputs).__name__} of {len(inputs)}: " + ", ".join(_describe(i) for i in inputs)
    if isinstance(inputs, dict):
        return "dict with keys " + ", ".join(map(str, inputs))
    return type(inputs).__name__


def _custom_op(graph: Any, module: Any) -> str | None:
    """The name of a custom autograd Function behind an op node, if it is one."""
    node = graph.module2node.get(module)
    grad_fn = getattr(node, "grad_fn", None)
    if isinstance(grad_fn, torch.autograd.function.BackwardCFunction):
        return str(grad_fn.name())  # type: ignore[attr-defined]
    return None


def analyse(model: nn.Module, example_inputs: Any, *, output: str | int | None = None) -> ModelAnalysis:
    """Analyse ``model``: its prunable groups, lone layers and what was skipped and why.

    When Torch-Pruning cannot trace the model, the analysis goes on without a graph: every
    weight-carrying layer is offered for unstructured pruning, with the tracer's error as
    the reason structured pruning is not.
    """
    was_training = model.training
    model.eval()
    graph: Any = None
    untraced: str | None = None
    try:
        check_runs(model, example_inputs, output)
        try:
            graph = build_graph(model, example_inputs, output)
        except PreflightError as exc:
            cause = exc.__cause__
            untraced = f"Torch-Pruning cannot trace {type(model).__name__} ({type(cause).__name__}: {cause})"
            _logger.warning("%s; its layers are offered for unstructured pruning only", untraced)
    finally:
        model.train(was_training)
    analysis = ModelAnalysis(layers=[])
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            analysis.num_heads[name] = module.num_heads
    layouts = _attention.find_attention(model)
    analysis.num_heads.update({layout.name: layout.heads for layout in layouts})
    trace = _Trace(model, graph, layouts)
    if graph is not None:
        trace.functional = _functional_layers(model, graph, example_inputs, output)
        for group in graph.get_all_groups(root_module_types=root_types(model)):
            info = _group_entry(trace, group)
            if info is not None:
                analysis.layers.append(info)
    _lone_layers(trace, untraced, analysis)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    analysis.layers.sort(key=lambda i: order[i.name])
    return analysis


@dataclass
class _Trace:
    """What the entries are read from, and what they have claimed so far."""

    model: nn.Module
    graph: Any
    layouts: list[_attention.HeadLayout]
    covered: set[str] = field(default_factory=set)
    # Unwrapped parameter -> the group Torch-Pruning slices it with (by root name).
    unwrapped_in_group: dict[str, str] = field(default_factory=dict)
    # Layers whose weight the forward uses without calling them: name -> (in, out) widths.
    functional: dict[str, tuple[int, int]] = field(default_factory=dict)


def _functional_layers(
    model: nn.Module, graph: Any, example_inputs: Any, output: str | int | None
) -> dict[str, tuple[int, int]]:
    """Weight layers the tracer never saw called but whose weight reaches the output.

    torchvision's Swin calls ``F.linear(x, self.qkv.weight)``: Torch-Pruning sees an
    element-wise op there and would cut the channels around it without cutting the weight.
    """
    # nn.MultiheadAttention calls its out_proj functionally; Torch-Pruning handles that itself.
    inside_mha = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.modules()}
    unseen = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, root_types(model)) and _weights_of(m) and m not in graph.module2node and id(m) not in inside_mha
    }
    if not unseen:
        return {}
    weights = [getattr(m, _weights_of(m)[0]) for m in unseen.values()]
    with torch.enable_grad():
        out = select_output(call_model(model, example_inputs), output)
        grads = torch.autograd.grad(out.float().sum(), weights, allow_unused=True)
    found: dict[str, tuple[int, int]] = {}
    for (name, module), grad in zip(unseen.items(), grads, strict=True):
        if grad is not None and isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            w = module.weight
            found[name] = (int(w.shape[1] * getattr(module, "groups", 1)), int(w.shape[0]))
    return found


def _group_entry(trace: _Trace, group: Any) -> LayerInfo | None:
    """The entry of one Torch-Pruning group (None when its root is not a named layer)."""
    torch_pruning()  # imported by the one helper first
    from torch_pruning import ops

    model, graph, layouts, covered = trace.model, trace.graph, trace.layouts, trace.covered
    unwrapped_in_group = trace.unwrapped_in_group

    names = {m: n for n, m in model.named_modules()}
    param_names = {p: n for n, p in model.named_parameters()}
    explicit = _attention.token_parameters(model)
    projections = {p: layout for layout in layouts for p in layout.projections}
    layer_types = root_types(model) + _FOLLOWER_TYPES
    root = group[0][0].target.module
    root_name = names.get(root)
    if root_name is None:
        return None
    channels = int(graph.get_out_channels(root) or 0)
    members: list[str] = []
    output_coupled = False
    custom_ops: list[str] = []
    ambiguous: list[str] = []
    ch_groups = 1
    heads = 0
    for dep, _ in group:
        target = dep.target.module
        if dep.target.type == ops.OPTYPE.PARAMETER:
            pname = param_names.get(target, "?")
            unwrapped_in_group.setdefault(pname, root_name)
            if pname not in explicit and sum(size > 1 for size in target.shape) > 1:
                # Torch-Pruning guesses the last non-singleton dim; with several it may
                # guess wrong and break the model.
                ambiguous.append(f"{pname} {tuple(target.shape)}")
            continue
        op = _custom_op(graph, target)
        if op is not None and op not in custom_ops:
            custom_ops.append(op)
        if not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        node = graph.module2node.get(target)
        if node is not None and len(node.outputs) == 0:
            output_coupled = True
        tname = names.get(target)
        if tname is None or not isinstance(target, layer_types):
            continue
        if tname not in members:
            members.append(tname)
        if isinstance(target, nn.MultiheadAttention):
            ch_groups = max(ch_groups, target.num_heads)
            heads = max(heads, target.num_heads)
        elif target in projections:
            layout = projections[target]
            # A fused qkv holds three times the heads: each of q, k and v keeps whole heads.
            ch_groups = max(ch_groups, layout.heads * max(1, channels // layout.width()))
            # Not offered: a per-head parameter (Swin's bias table) would need cutting too, and
            # Torch-Pruning's head removal reads `out_features`, which Conv1D lacks.
            if not layout.per_head and isinstance(target, nn.Linear):
                heads = max(heads, layout.heads)
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
    touching = [n for n, widths in trace.functional.items() if channels in widths]
    conv1d = _attention.conv1d_type()
    conv1d_members = [m for m in members if conv1d is not None and isinstance(model.get_submodule(m), conv1d)]
    reason: str | None = None
    if output_coupled:
        reason = "its output channels are the model's output"
    elif custom_ops:
        reason = f"its channels pass through custom autograd op(s) {', '.join(custom_ops)} that Torch-Pruning cannot see into"
    elif ambiguous:
        reason = (
            f"it is coupled with unwrapped parameter(s) {', '.join(ambiguous)} whose channel dimension "
            "Torch-Pruning would have to guess"
        )
    elif conv1d_members:
        # Torch-Pruning has no Conv1D pruner and takes per-layer ratios only for the layer
        # types it registers; the pruner registered here keeps the graph right (so other
        # groups are cut correctly) but cutting Conv1D itself is not supported yet.
        reason = f"structured pruning of transformers' Conv1D ({conv1d_members[0]}) is not supported"
    elif touching:
        reason = (
            f"its channels may reach {', '.join(touching)}, whose weight the forward uses without calling the "
            "layer, out of Torch-Pruning's sight"
        )
    elif channels <= ch_groups:
        reason = "only one channel per channel group"
    if reason is not None:
        methods: tuple[str, ...] = ("unstructured",) if weights else ()
        max_amount = 0.99
    else:
        methods = ("structured", "unstructured")
        max_amount = math.floor((1 - ch_groups / channels) * 100) / 100
    return LayerInfo(
        name=root_name,
        type=type(root).__name__,
        members=tuple(members),
        weights=tuple(weights),
        channels=channels,
        channel_groups=ch_groups,
        params=sum(model.get_submodule(w).get_parameter(p).numel() for w, p in weights),
        methods=methods,
        max_amount=max_amount,
        reason=reason,
        heads=heads,
    )


def _lone_layers(trace: _Trace, untraced: str | None, analysis: ModelAnalysis) -> None:
    """Layers with weights that no group covers: custom modules, untraced branches or models."""
    model, graph, covered, unwrapped_in_group = trace.model, trace.graph, trace.covered, trace.unwrapped_in_group
    weight_types = root_types(model)
    for name, module in model.named_modules():
        if name in covered:
            continue
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        if name == "":
            # Parameters held by the model itself are listed one by one, by their own name.
            for p in own:
                fate = (
                    f"not pruned itself (coupled with the channels of group {unwrapped_in_group[p]})"
                    if p in unwrapped_in_group
                    else "no Torch-Pruning handler, left as is"
                )
                analysis.skipped.append((p, f"unwrapped parameter {p} of {type(model).__name__}: {fate}"))
            continue
        # MultiheadAttention's out_proj is listed with the attention; norms follow their group.
        parent = model.get_submodule(name.rpartition(".")[0])
        if isinstance(parent, nn.MultiheadAttention) or isinstance(module, _FOLLOWER_TYPES):
            continue
        wnames = _weights_of(module)
        if isinstance(module, weight_types) and wnames:
            if untraced is not None:
                reason = untraced
            elif name in trace.functional:
                reason = "the forward uses its weight without calling the layer, out of Torch-Pruning's sight"
            elif module not in graph.module2node:
                reason = "not used in the traced forward pass"
            else:
                reason = "not reached when tracing the model with the example inputs"
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
            continue
        kind = "unwrapped parameter(s)" if not isinstance(module, weight_types) else "no weight"
        sliced = sorted({unwrapped_in_group[f"{name}.{p}"] for p in own if f"{name}.{p}" in unwrapped_in_group})
        fate = (
            f"not pruned itself (coupled with the channels of group(s) {', '.join(sliced)})"
            if sliced
            else "no Torch-Pruning handler, left as is"
        )
        analysis.skipped.append((name, f"{type(module).__name__} with {kind} {', '.join(own)}: {fate}"))
