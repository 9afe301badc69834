"""Attention head bookkeeping for Torch-Pruning, and the zoo layers it must be told about.

Torch-Pruning removes channels; it does not know that an attention module keeps its head
layout in plain attributes (``num_heads``, ``head_dim``, ``all_head_size``...) that its
forward reshapes by. This module finds such attention modules by their attributes (timm
``Attention`` and window attention, Hugging Face BERT/ViT/DistilBERT self-attention, GPT-2),
gives Torch-Pruning their head layout (its ``num_heads`` mapping, keyed by the q/k/v
projections), and writes the new layout back after surgery, as Torch-Pruning's own timm and
Hugging Face examples do. ``nn.MultiheadAttention`` is not handled here: Torch-Pruning prunes
it natively.

It also names the parameters that carry the embedding width outside any layer (class and
position tokens, pruned along their last dimension) and registers a pruner for the
``Conv1D`` layer of GPT-2 (a ``Linear`` with a transposed weight).

The softmax scale is deliberately left as it is: it is the temperature the weights were
trained at, and recomputing it from a smaller head size would sharpen every attention
distribution of the pruned model.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from autoprune._tp import torch_pruning

__all__ = [
    "HeadLayout",
    "conv1d_type",
    "customized_pruners",
    "find_attention",
    "num_heads_map",
    "projection_width",
    "token_parameters",
    "update_heads",
]

# Names under which attention modules keep their projections and head layout.
_FUSED = ("qkv", "c_attn", "to_qkv")
_SEPARATE = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"), ("q", "k", "v"))
_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_HEAD_DIM = ("head_dim", "attention_head_size", "head_size", "dim_per_head")
# Attributes holding the width of all heads together (q's output features).
_ALL_HEADS = ("attn_dim", "all_head_size", "split_size")
# Parameters that carry the embedding width in their last dimension, outside any layer.
_TOKEN_PARAM = re.compile(
    r"(^|\.)((cls|class|dist|reg|mask)_token|pos_embed|pos_embedding|position_embeddings|absolute_pos_embed)$"
)


def conv1d_type() -> type[nn.Module] | None:
    """transformers' ``Conv1D`` (GPT-2's linear layer, weight ``(in, out)``), if loaded.

    Read from ``sys.modules`` instead of imported: a model that holds a ``Conv1D`` has loaded
    its module already, and importing transformers for a model without one costs seconds."""
    module = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(module, "Conv1D", None)
    return conv1d if isinstance(conv1d, type) else None


def projection_width(module: nn.Module) -> int:
    """Output features of a ``Linear`` or ``Conv1D`` projection."""
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    return int(module.weight.shape[1])  # type: ignore[index, union-attr]


@dataclass(frozen=True)
class HeadLayout:
    """One attention module whose heads live in attributes, as found before pruning.

    Attributes:
        name: the module's path.
        module: the attention module.
        projections: ``(qkv,)`` when fused, else ``(q, k, v)``.
        heads_attr: the attribute holding the number of heads.
        head_dim_attr: the attribute holding the head size (None when the forward infers it).
        width_attrs: attributes holding the width of all heads together.
        heads: number of heads when found.
        head_dim: head size when found.
        per_head: parameters of the module with one entry per head (Swin's relative position
            bias table); whole heads cannot be removed while they hold every head.
    """

    name: str
    module: nn.Module
    projections: tuple[nn.Module, ...]
    heads_attr: str
    head_dim_attr: str | None
    width_attrs: tuple[str, ...]
    heads: int
    head_dim: int
    per_head: tuple[str, ...] = ()

    @property
    def fused(self) -> bool:
        return len(self.projections) == 1

    def width(self) -> int:
        """The current width of all heads together (q's output features)."""
        out = projection_width(self.projections[0])
        return out // 3 if self.fused else out


def _projection_types() -> tuple[type[nn.Module], ...]:
    conv1d = conv1d_type()
    return (nn.Linear,) if conv1d is None else (nn.Linear, conv1d)


def _layout(name: str, module: nn.Module) -> HeadLayout | None:
    if isinstance(module, nn.MultiheadAttention):
        return None
    heads_attr = next((a for a in _HEADS if isinstance(getattr(module, a, None), int)), None)
    if heads_attr is None:
        return None
    heads = int(getattr(module, heads_attr))
    types = _projection_types()
    children = dict(module.named_children())
    projections: tuple[nn.Module, ...] | None = None
    for fused in _FUSED:
        if isinstance(children.get(fused), types):
            projections = (children[fused],)
    for names in _SEPARATE:
        if all(isinstance(children.get(n), types) for n in names):
            projections = tuple(children[n] for n in names)
    if projections is None or heads < 1:
        return None
    out = projection_width(projections[0])
    width = out // 3 if len(projections) == 1 else out
    if out % (3 if len(projections) == 1 else 1) or width % heads:
        return None  # not the layout this module guesses (e.g. grouped-query attention)
    if len(projections) == 3 and {projection_width(p) for p in projections} != {width}:
        return None
    head_dim = width // heads
    head_dim_attr = next((a for a in _HEAD_DIM if getattr(module, a, None) == head_dim), None)
    width_attrs = tuple(a for a in _ALL_HEADS if getattr(module, a, None) == width)
    per_head = tuple(
        n for n, p in module.named_parameters(recurse=False) if heads > 1 and heads in p.shape and p.dim() > 1
    )
    return HeadLayout(name, module, projections, heads_attr, head_dim_attr, width_attrs, heads, head_dim, per_head)


def find_attention(model: nn.Module) -> list[HeadLayout]:
    """Every attention module of ``model`` with q/k/v projections and a head count attribute."""
    return [layout for name, m in model.named_modules() if (layout := _layout(name, m)) is not None]


def num_heads_map(layouts: list[HeadLayout]) -> dict[nn.Module, int]:
    """Torch-Pruning's ``num_heads`` argument: each q/k/v projection -> its number of heads."""
    return {p: int(getattr(layout.module, layout.heads_attr)) for layout in layouts for p in layout.projections}


def update_heads(layouts: list[HeadLayout], *, whole_heads: bool) -> None:
    """Write the head layout back into each module after Torch-Pruning cut its projections.

    With ``whole_heads`` the head size stays and the number of heads follows the new width;
    otherwise the number of heads stays and the head size follows it.
    """
    for layout in layouts:
        module = layout.module
        width = layout.width()
        heads = int(getattr(module, layout.heads_attr))
        if whole_heads:
            head_dim = layout.head_dim if layout.head_dim_attr is None else int(getattr(module, layout.head_dim_attr))
            heads = width // head_dim
        else:
            head_dim = width // heads
        if heads * head_dim != width:
            raise RuntimeError(f"{layout.name}: width {width} is not {heads} heads of {head_dim}")
        setattr(module, layout.heads_attr, heads)
        if layout.head_dim_attr is not None:
            setattr(module, layout.head_dim_attr, head_dim)
        for attr in layout.width_attrs:
            setattr(module, attr, width)


@contextlib.contextmanager
def per_head_parameters_frozen(model: nn.Module) -> Iterator[None]:
    """Keep Torch-Pruning's tracer off the per-head parameters (relative position bias tables).

    They feed the attention logits through an index and reshapes whose channel mapping
    Torch-Pruning expands without bound (Swin and MaxViT in torchvision ran out of memory);
    their head count never changes when head dims are pruned, and whole heads are not
    offered for such modules. The tracer follows only parameters that require gradients.
    """
    params = [getattr(layout.module, n) for layout in find_attention(model) for n in layout.per_head]
    states = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, state in zip(params, states, strict=True):
            p.requires_grad_(state)


def token_parameters(model: nn.Module) -> dict[str, int]:
    """Class/position token parameters -> the dimension that carries the embedding width.

    Torch-Pruning guesses the last non-singleton dimension of a parameter it finds outside
    any layer; for these (``(1, tokens, width)``) the width is the last dimension, said
    explicitly so that the preflight need not call it a guess.
    """
    return {n: p.dim() - 1 for n, p in model.named_parameters() if _TOKEN_PARAM.search(n) and p.dim() >= 2}


def customized_pruners(model: nn.Module) -> dict[Any, Any]:
    """Torch-Pruning pruners for zoo layers it does not know (GPT-2's ``Conv1D``)."""
    conv1d = conv1d_type()
    if conv1d is None or not any(isinstance(m, conv1d) for m in model.modules()):
        return {}
    return {conv1d: _conv1d_pruner()}


@functools.cache
def _conv1d_pruner() -> Any:
    """A Torch-Pruning pruner for transformers' ``Conv1D`` (built on first use: Torch-Pruning
    is imported only when something is pruned)."""
    tp = torch_pruning()

    class Conv1DPruner(tp.pruner.function.BasePruningFunc):  # type: ignore[misc, name-defined]
        def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            keep = sorted(set(range(self.get_out_channels(layer))) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
            if layer.bias is not None:
                layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
            layer.nf = len(keep)  # type: ignore[assignment]
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            keep = sorted(set(range(self.get_in_channels(layer))) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
            layer.nx = len(keep)  # type: ignore[assignment]
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(layer.weight.shape[1])  # type: ignore[index, union-attr]

        def get_in_channels(self, layer: nn.Module) -> int:
            return int(layer.weight.shape[0])  # type: ignore[index, union-attr]

    return Conv1DPruner()


def conv1d_magnitude(group: Any, p: int) -> torch.Tensor | None:
    """L-p magnitude of the ``Conv1D`` weights in a Torch-Pruning group, per root channel.

    Torch-Pruning's magnitude criteria skip layers they do not know; without this, a group
    made only of ``Conv1D`` layers (GPT-2's attention and MLP) would have no importance.
    """
    conv1d = conv1d_type()
    if conv1d is None:
        return None
    found: list[tuple[torch.Tensor, list[int]]] = []
    for i, (dep, idxs) in enumerate(group):
        layer: Any = dep.layer
        if not isinstance(layer, conv1d) or not idxs:
            continue
        weight = cast(torch.Tensor, layer.weight).detach()
        out = getattr(dep.pruning_fn, "__name__", "") == "prune_out_channels"
        if max(idxs) >= weight.shape[1 if out else 0]:
            continue
        w = weight[:, idxs].t() if out else weight[idxs]
        root = group[i].root_idxs
        if root is None or any(r is None for r in root):
            continue
        found.append((w.abs().pow(p).sum(1), list(root)))
    if not found:
        return None
    n = max(len(group[0][1]), *(max(root) + 1 for _, root in found))
    scores = []
    for local, root in found:
        full = torch.zeros(n, dtype=local.dtype)
        full.index_add_(0, torch.as_tensor(root), local)
        scores.append(full / (full.mean() + 1e-12))
    return torch.stack(scores).mean(0)
