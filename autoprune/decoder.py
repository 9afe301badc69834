"""Structural surgery on decoder language models: attention heads, MLP channels, whole blocks.

Unstructured and N:M sparsity leave every matrix its shape, so a CPU (and plain PyTorch on a
GPU) runs them no faster. This module makes the matrices smaller, without tracing the model
(Torch-Pruning's dependency graph takes minutes on a Llama and is not needed: the couplings
of a decoder block are known):

- **heads**: the query heads of a block, with grouped-query attention kept valid. A block
  with ``G`` key/value heads and ``R`` query heads per group keeps ``g <= G`` whole groups
  with ``r <= R`` query heads in each (every group the same ``r``: that is what
  ``num_key_value_groups`` expresses). Among the factorizations ``g * r`` of the kept count,
  the one keeping the most importance wins. Head size is kept.
- **MLP channels**: gate, up and down (Llama, Qwen2, Mistral) or ``c_fc`` and ``c_proj``
  (GPT-2) pruned together.
- **blocks**: whole decoder blocks removed, the attention's ``layer_idx`` renumbered and the
  config's ``num_hidden_layers`` (and ``layer_types``) updated, so a KV cache still lines up.

Importance (from calibration batches, the dense model): a channel of the MLP or a head's
slice of the attention output scores ``||X_c||_2 * sum_i |W_ic|`` summed over its input
columns of the down (output) projection (Wanda's score per channel, as Wanda-sp/FLAP); a
block scores its **block influence** ``1 - cos(h_in, h_out)`` averaged over tokens
(ShortGPT): the blocks that change the hidden state least are removed first. Without
calibration the activation norm is left out (weight magnitude only) and block removal needs
the blocks named.

Families: Hugging Face Llama, Qwen2, Mistral (and anything with ``self_attn.{q,k,v,o}_proj``
and ``mlp.{gate,up,down}_proj``) and GPT-2 (``attn.c_attn`` fused qkv, ``Conv1D`` layers).
After pruning, ``config.autoprune_layers`` lists every block's heads, key/value heads and MLP
width; when all blocks agree, the config's own fields say it too, so ``from_pretrained`` of
the model's class reloads it (see :mod:`autoprune.lm.modeling_autoprune` when they differ).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune._errors import ScheduleError
from autoprune._inputs import call_model

__all__ = [
    "BlockShape",
    "DecoderLayout",
    "StructureError",
    "StructureScores",
    "allowed_head_counts",
    "decoder_layout",
    "prune_decoder_",
    "structure_scores",
]


class StructureError(ScheduleError):
    """A structural plan this decoder cannot take, or a decoder this module does not know."""


@dataclass(frozen=True)
class BlockShape:
    """One decoder block's widths."""

    heads: int  # query heads
    kv_heads: int  # key/value heads (== heads without grouped-query attention)
    head_dim: int
    intermediate: int  # MLP channels

    def as_dict(self) -> dict[str, int]:
        return {"heads": self.heads, "kv_heads": self.kv_heads, "head_dim": self.head_dim,
                "intermediate": self.intermediate}  # fmt: skip


@dataclass(frozen=True)
class DecoderLayout:
    """Where a decoder's blocks and their projections are."""

    family: str  # "llama" (Llama, Qwen2, Mistral...) or "gpt2"
    blocks_path: str  # "model.layers" or "transformer.h"

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        blocks = model.get_submodule(self.blocks_path)
        assert isinstance(blocks, nn.ModuleList)
        return blocks

    def block_names(self, model: nn.Module) -> list[str]:
        return [f"{self.blocks_path}.{i}" for i in range(len(self.blocks(model)))]

    def attention_name(self, block: str) -> str:
        return f"{block}.self_attn" if self.family == "llama" else f"{block}.attn"

    def mlp_name(self, block: str) -> str:
        return f"{block}.mlp"

    def shape(self, block: Any) -> BlockShape:
        if self.family == "llama":
            attn, mlp = block.self_attn, block.mlp
            d = int(attn.head_dim)
            return BlockShape(attn.q_proj.out_features // d, attn.k_proj.out_features // d, d, mlp.up_proj.out_features)
        attn, mlp = block.attn, block.mlp
        d = int(attn.head_dim)
        return BlockShape(attn.c_attn.nf // 3 // d, attn.c_attn.nf // 3 // d, d, mlp.c_fc.nf)

    def shapes(self, model: nn.Module) -> list[BlockShape]:
        return [self.shape(b) for b in self.blocks(model)]

    def output_projections(self, block: str) -> dict[str, str]:
        """The layers whose input columns are the heads' outputs and the MLP's channels."""
        if self.family == "llama":
            return {"heads": f"{block}.self_attn.o_proj", "channels": f"{block}.mlp.down_proj"}
        return {"heads": f"{block}.attn.c_proj", "channels": f"{block}.mlp.c_proj"}


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def decoder_layout(model: nn.Module) -> DecoderLayout:
    """The layout of a supported decoder, or :class:`StructureError` saying what is missing."""
    name = type(model).__name__
    for path, family in (("model.layers", "llama"), ("transformer.h", "gpt2")):
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            continue
        block = blocks[0]
        if family == "llama":
            attn, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
            needed = [getattr(attn, p, None) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
            needed += [getattr(mlp, p, None) for p in ("gate_proj", "up_proj", "down_proj")]
            if all(isinstance(m, nn.Linear) for m in needed) and isinstance(getattr(attn, "head_dim", None), int):
                return DecoderLayout(family, path)
            missing = "self_attn.{q,k,v,o}_proj, self_attn.head_dim and mlp.{gate,up,down}_proj"
        else:
            attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
            needed = [getattr(attn, "c_attn", None), getattr(attn, "c_proj", None)]
            needed += [getattr(mlp, "c_fc", None), getattr(mlp, "c_proj", None)]
            if all(m is not None and _is_conv1d(m) for m in needed) and not getattr(attn, "is_cross_attention", False):
                return DecoderLayout(family, path)
            missing = "attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj as Conv1D"
        raise StructureError(
            f"{name}'s blocks ({path}) do not have the layout structural pruning knows ({missing}); "
            "prune it unstructured (criterion magnitude, wanda or sparsegpt) instead"
        )
    raise StructureError(
        f"{name} has no decoder blocks at model.layers (Llama, Qwen2, Mistral) or transformer.h (GPT-2), "
        "so its attention heads and MLP cannot be pruned structurally; prune it unstructured instead"
    )


# ---------------------------------------------------------------------------- importance
@dataclass
class StructureScores:
    """Importance of every head, MLP channel and block of the dense model."""

    heads: list[torch.Tensor]  # per block, (heads,)
    channels: list[torch.Tensor]  # per block, (intermediate,)
    influence: list[float] | None  # per block, ShortGPT's block influence; None without calibration


def _input_columns(module: Any) -> torch.Tensor:
    """``sum_i |W_ic|`` per input column ``c`` (the weight as (out, in))."""
    weight = module.weight.detach()
    matrix = weight.t() if _is_conv1d(module) else weight
    return matrix.abs().sum(dim=0).to(torch.float64)


def structure_scores(model: nn.Module, calibration: Sequence[Any] | None = None) -> StructureScores:
    """Score heads, channels and blocks of ``model`` (see the module docstring)."""
    layout = decoder_layout(model)
    names = layout.block_names(model)
    projections = {role: [model.get_submodule(layout.output_projections(b)[role]) for b in names]
                   for role in ("heads", "channels")}  # fmt: skip
    norms: dict[int, torch.Tensor] = {}
    influence: list[list[float]] = [[] for _ in names]
    if calibration:
        handles = []

        def record_input(module: nn.Module) -> Callable[..., None]:
            def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
                total = x.pow(2).sum(dim=0)
                norms[id(module)] = norms.get(id(module), 0) + total

            return hook

        def record_block(index: int) -> Callable[..., None]:
            def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
                h_in = args[0] if args else kwargs["hidden_states"]
                h_out = out[0] if isinstance(out, tuple) else out
                cos = nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
                influence[index].extend((1.0 - cos).flatten().tolist())

            return hook

        for modules in projections.values():
            handles += [m.register_forward_pre_hook(record_input(m)) for m in modules]
        blocks = layout.blocks(model)
        handles += [blocks[i].register_forward_hook(record_block(i), with_kwargs=True) for i in range(len(blocks))]
        was_training = model.training
        try:
            model.eval()
            with torch.inference_mode():
                for batch in calibration:
                    call_model(model, batch)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
    heads: list[torch.Tensor] = []
    channels: list[torch.Tensor] = []
    for i, block in enumerate(layout.blocks(model)):
        shape = layout.shape(block)
        for role, out in (("heads", heads), ("channels", channels)):
            module = projections[role][i]
            column = _input_columns(module)
            if id(module) in norms:
                column = column * norms[id(module)].sqrt()
            out.append(column.reshape(shape.heads, shape.head_dim).sum(dim=1) if role == "heads" else column)
    return StructureScores(heads, channels, [sum(v) / len(v) for v in influence] if calibration else None)


# ---------------------------------------------------------------------------- plans -> kept indices
def allowed_head_counts(shape: BlockShape) -> list[int]:
    """Query-head counts a block can keep: ``g * r`` for ``g <= kv_heads`` groups of ``r <=
    heads / kv_heads`` query heads."""
    per_group = shape.heads // shape.kv_heads
    return sorted({g * r for g in range(1, shape.kv_heads + 1) for r in range(1, per_group + 1)})


def allowed_head_amounts(shape: BlockShape) -> list[float]:
    """The head amounts (fractions of query heads removed) :func:`prune_decoder_` accepts."""
    return sorted(round(1 - k / shape.heads, 6) for k in allowed_head_counts(shape) if k)


def _kept_heads(amount: float, shape: BlockShape, scores: torch.Tensor, block: str) -> tuple[list[int], list[int]]:
    """(kept query heads, kept key/value heads) for a head amount."""
    keep = shape.heads - round(amount * shape.heads)
    allowed = allowed_head_counts(shape)
    if keep not in allowed:
        amounts = ", ".join(f"{a:g}" for a in allowed_head_amounts(shape))
        what = "no query head" if keep <= 0 else f"{keep} of {shape.heads} query heads"
        raise StructureError(
            f"heads amount {amount:g} on {block} keeps {what}, which {shape.kv_heads} key/value groups of "
            f"{shape.heads // shape.kv_heads} query heads cannot hold (every group keeps the same number of query "
            f"heads, no group is left empty); allowed amounts: {amounts}"
        )
    per_group = shape.heads // shape.kv_heads
    grouped = scores.reshape(shape.kv_heads, per_group)
    best: tuple[float, list[int], list[int]] | None = None
    for g in range(1, shape.kv_heads + 1):
        if keep % g or keep // g > per_group:
            continue
        r = keep // g
        top = grouped.topk(r, dim=1)
        group_scores = top.values.sum(dim=1)
        groups = sorted(group_scores.topk(g).indices.tolist())
        total = float(group_scores[groups].sum())
        q = sorted(k * per_group + int(j) for k in groups for j in top.indices[k].tolist())
        if best is None or total > best[0]:
            best = (total, q, groups)
    assert best is not None
    return best[1], best[2]


def _kept_channels(amount: float, size: int, scores: torch.Tensor, multiple: int, block: str) -> list[int]:
    if not 0.0 <= amount < 1.0:
        raise StructureError(f"`0 <= amount < 1` must hold for the MLP of {block}, but got amount={amount!r}")
    keep = size - round(amount * size)
    keep = max(multiple, int(math.floor(keep / multiple)) * multiple) if multiple > 1 else max(1, keep)
    keep = min(keep, size)
    return sorted(scores.topk(keep).indices.tolist())


# ---------------------------------------------------------------------------- surgery
def _rows(index: list[int], width: int) -> torch.Tensor:
    return torch.tensor([h * width + j for h in index for j in range(width)], dtype=torch.long)


def _linear_keep(module: nn.Linear, *, out: torch.Tensor | None = None, inp: torch.Tensor | None = None) -> nn.Linear:
    weight = module.weight.detach()
    if out is not None:
        weight = weight[out]
    if inp is not None:
        weight = weight[:, inp]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None,
                    device=weight.device, dtype=weight.dtype)  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(weight)
        if module.bias is not None:
            new.bias.copy_(module.bias.detach() if out is None else module.bias.detach()[out])
    new.train(module.training)
    return new


def _conv1d_keep(module: Any, *, out: torch.Tensor | None = None, inp: torch.Tensor | None = None) -> nn.Module:
    """GPT-2's ``Conv1D`` (weight stored ``(in, out)``), sliced in place of a copy."""
    with torch.no_grad():
        weight = module.weight.detach()
        if out is not None:
            weight = weight[:, out]
            module.bias = nn.Parameter(module.bias.detach()[out].clone())
        if inp is not None:
            weight = weight[inp]
        module.weight = nn.Parameter(weight.clone())
    module.nf = int(module.weight.shape[1])
    if hasattr(module, "nx"):
        module.nx = int(module.weight.shape[0])
    return module


def _prune_heads(layout: DecoderLayout, block: Any, shape: BlockShape, q: list[int], kv: list[int]) -> None:
    d = shape.head_dim
    if layout.family == "llama":
        attn = block.self_attn
        rows_q, rows_kv = _rows(q, d), _rows(kv, d)
        attn.q_proj = _linear_keep(attn.q_proj, out=rows_q)
        attn.k_proj = _linear_keep(attn.k_proj, out=rows_kv)
        attn.v_proj = _linear_keep(attn.v_proj, out=rows_kv)
        attn.o_proj = _linear_keep(attn.o_proj, inp=rows_q)
        attn.num_key_value_groups = len(q) // len(kv)
        for field, value in (("num_heads", len(q)), ("num_key_value_heads", len(kv))):
            if hasattr(attn, field):
                setattr(attn, field, value)
        return
    attn = block.attn
    width = shape.heads * d
    rows = _rows(q, d)
    attn.c_attn = _conv1d_keep(attn.c_attn, out=torch.cat([rows, rows + width, rows + 2 * width]))
    attn.c_proj = _conv1d_keep(attn.c_proj, inp=rows)
    attn.num_heads = len(q)
    attn.split_size = len(q) * d
    attn.embed_dim = len(q) * d  # GPT2Attention's embed_dim is its inner width (the hidden size is kept)


def _prune_channels(layout: DecoderLayout, block: Any, keep: list[int]) -> None:
    index = torch.tensor(keep, dtype=torch.long)
    mlp = block.mlp
    if layout.family == "llama":
        mlp.gate_proj = _linear_keep(mlp.gate_proj, out=index)
        mlp.up_proj = _linear_keep(mlp.up_proj, out=index)
        mlp.down_proj = _linear_keep(mlp.down_proj, inp=index)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(keep)
        return
    mlp.c_fc = _conv1d_keep(mlp.c_fc, out=index)
    mlp.c_proj = _conv1d_keep(mlp.c_proj, inp=index)


def _remove_blocks(model: nn.Module, layout: DecoderLayout, remove: Sequence[int]) -> None:
    blocks = layout.blocks(model)
    n = len(blocks)
    bad = [i for i in remove if not (isinstance(i, int) and 0 <= i < n)]
    if bad:
        raise StructureError(f"block index {bad[0]!r} is not a block of this model (0..{n - 1})")
    if len(set(remove)) >= n:
        raise StructureError(f"removing {len(set(remove))} of {n} blocks leaves none; keep at least one block")
    config = getattr(model, "config", None)
    if layout.family == "gpt2" and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise StructureError(
            "this GPT-2 scales attention by 1/(layer index + 1) (scale_attn_by_inverse_layer_idx=True), so "
            "removing a block changes the blocks after it; remove no blocks of this model"
        )
    kept = [i for i in range(n) if i not in set(remove)]
    parent_path, _, attr = layout.blocks_path.rpartition(".")
    parent = model.get_submodule(parent_path)
    setattr(parent, attr, nn.ModuleList([blocks[i] for i in kept]))
    block: Any
    for new_index, block in enumerate(layout.blocks(model)):
        attn = block.self_attn if layout.family == "llama" else block.attn
        attn.layer_idx = new_index
        if hasattr(block, "layer_idx"):
            block.layer_idx = new_index
    if config is not None:
        config.num_hidden_layers = len(kept)
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == n:
            config.layer_types = [types[i] for i in kept]


def _update_config(model: nn.Module, layout: DecoderLayout) -> None:
    """Record every block's widths in the config; where all blocks agree (and ``transformers``'
    config checks allow it: the hidden size a multiple of the heads), in its own fields too."""
    config = getattr(model, "config", None)
    if config is None:
        return
    shapes = layout.shapes(model)
    config.autoprune_layers = [s.as_dict() for s in shapes]
    first = shapes[0]
    if all(s.intermediate == first.intermediate for s in shapes):
        if layout.family == "llama":
            config.intermediate_size = first.intermediate
        else:
            config.n_inner = first.intermediate
    same_heads = all((s.heads, s.kv_heads, s.head_dim) == (first.heads, first.kv_heads, first.head_dim) for s in shapes)
    if layout.family == "llama" and same_heads and config.hidden_size % first.heads == 0:
        config.num_attention_heads = first.heads
        config.num_key_value_heads = first.kv_heads
        config.head_dim = first.head_dim


def prune_decoder_(
    model: nn.Module,
    *,
    heads: dict[int, float] | None = None,
    channels: dict[int, float] | None = None,
    remove: Sequence[int] = (),
    scores: StructureScores | None = None,
    round_to: int | None = None,
) -> nn.Module:
    """Prune ``model`` in place and return it.

    Args:
        heads: block index -> fraction of its query heads removed (see
            :func:`allowed_head_amounts`).
        channels: block index -> fraction of its MLP channels removed.
        remove: indices of blocks removed (after the widths are cut).
        scores: importance from :func:`structure_scores` on this model (default: weight
            magnitude only).
        round_to: keep MLP channel counts a multiple of this.

    Raises:
        StructureError: an unknown layout, a head amount grouped-query attention cannot hold,
            a block index out of range, removing every block.
    """
    layout = decoder_layout(model)
    heads, channels = dict(heads or {}), dict(channels or {})
    blocks = layout.blocks(model)
    names = layout.block_names(model)
    for index in list(heads) + list(channels):
        if not (isinstance(index, int) and 0 <= index < len(blocks)):
            raise StructureError(f"block index {index!r} is not a block of this model (0..{len(blocks) - 1})")
    scores = scores if scores is not None else structure_scores(model)
    plans = []
    for i, block in enumerate(blocks):  # every plan is checked before anything is cut
        shape = layout.shape(block)
        q = kv = None
        if heads.get(i, 0.0):
            amount = heads[i]
            if not (isinstance(amount, (int, float)) and 0.0 <= amount < 1.0):
                raise StructureError(
                    f"`0 <= amount < 1` must hold for the heads of {names[i]}, but got amount={amount!r}"
                )
            q, kv = _kept_heads(float(amount), shape, scores.heads[i], names[i])
        keep = None
        if channels.get(i, 0.0):
            keep = _kept_channels(float(channels[i]), shape.intermediate, scores.channels[i], round_to or 1, names[i])
        plans.append((shape, q, kv, keep))
    if remove:
        _remove_blocks(model, layout, [])  # checks the model allows it before cutting widths
        n = len(blocks)
        if any(not (isinstance(i, int) and 0 <= i < n) for i in remove) or len(set(remove)) >= n:
            _remove_blocks(model, layout, remove)  # raises with the reason
    for block, (shape, q, kv, keep) in zip(blocks, plans, strict=True):
        if q is not None and kv is not None and len(q) < shape.heads:
            _prune_heads(layout, block, shape, q, kv)
        if keep is not None and len(keep) < shape.intermediate:
            _prune_channels(layout, block, keep)
    if remove:
        _remove_blocks(model, layout, list(remove))
    _update_config(model, layout)
    return model


def removal_order(scores: StructureScores) -> list[int]:
    """Blocks from the least to the most influential (ShortGPT's removal order)."""
    if scores.influence is None:
        raise StructureError("block influence needs calibration batches (a task's calibration_inputs)")
    return sorted(range(len(scores.influence)), key=lambda i: (scores.influence[i], i))  # type: ignore[index]
