"""One-shot pruning of linear layers with calibration data: magnitude, Wanda and SparseGPT,
at unstructured or N:M patterns, written from the papers.

- **magnitude**: ``|W|``, compared across the whole layer.
- **Wanda** (Sun et al., 2023): ``|W_ij| * ||X_j||_2``, the weight times the L2 norm of its
  input feature over the calibration tokens, compared within each output row. The input
  norms come from the unpruned model (one calibration pass), so they can be computed once and
  shared by every allocation a search tries.
- **SparseGPT** (Frantar & Alistarh, 2023): per layer, the inverse Hessian of the layer-wise
  reconstruction problem (``H = 2 X^T X / n`` plus 1% damping) selects the weights to drop in
  blocks of 128 columns (``w^2 / [H^-1]_jj^2``) and updates the remaining weights of each row
  to compensate (the OBS update). Layers are pruned block by block of the decoder, each
  block's statistics taken on the outputs of the already pruned blocks before it.

Patterns: unstructured (a fraction of each layer), or ``"N:M"`` (N weights kept in every M
consecutive weights of a row along the input dimension; "2:4" is what sparse tensor cores run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from autoprune._errors import ScheduleError
from autoprune._inputs import call_model
from autoprune.schedule import CRITERIA, nm_pattern

__all__ = [
    "CRITERIA",
    "L1Unstructured",
    "InputStats",
    "collect_input_stats",
    "decoder_blocks",
    "keep_mask",
    "parse_pattern",
    "prunable_linears",
    "prune_linears_",
    "scores",
    "sparsegpt_",
    "weight_matrix",
]



def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"N:M"`` -> ``(N, M)``: N weights kept in every M (``0 < N < M <= 64``)."""
    return nm_pattern(pattern)


def _is_conv1d(module: nn.Module) -> bool:
    # transformers' GPT-2 Conv1D: a linear layer whose weight is stored (in, out)
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as ``(out_features, in_features)`` (a view, transposed for Conv1D)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.t() if _is_conv1d(module) else weight


def prunable_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear`` (and GPT-2 ``Conv1D``) except the output embedding and any layer
    whose weight is shared with another module (tied embeddings stay whole)."""
    counts: dict[int, int] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            counts[id(weight)] = counts.get(id(weight), 0) + 1
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    found = {}
    for name, module in model.named_modules():
        if not (isinstance(module, nn.Linear) or _is_conv1d(module)) or module is head:
            continue
        if counts.get(id(module.weight), 0) > 1:
            continue
        found[name] = module
    return found


def decoder_blocks(model: nn.Module) -> list[str]:
    """Names of the decoder's blocks, in order: the longest ``nn.ModuleList`` whose items hold
    linear layers (``model.layers`` of Llama, ``transformer.h`` of GPT-2); ``[]`` if none."""
    best: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            items = [f"{name}.{i}" for i in range(len(module))]
            if all(any(isinstance(m, nn.Linear) or _is_conv1d(m) for m in child.modules()) for child in module):
                best = items
    return best


@dataclass
class InputStats:
    """What a layer's inputs looked like over the calibration tokens."""

    sq_norm: torch.Tensor  # (in_features,): sum over tokens of x_j^2 (float64)
    hessian: torch.Tensor | None  # (in, in): sum over tokens of x x^T (float64), when asked
    tokens: int

    @property
    def norm(self) -> torch.Tensor:
        return self.sq_norm.sqrt()


def collect_input_stats(
    model: nn.Module, layers: dict[str, nn.Module], calibration: Sequence[Any], *, hessian: bool = False
) -> dict[str, InputStats]:
    """Run ``model`` on every calibration batch and gather each layer's input statistics."""
    stats: dict[str, InputStats] = {}
    handles = []

    def hook(name: str, module: nn.Module) -> Callable[..., None]:
        def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            entry = stats.get(name)
            if entry is None:
                n = x.shape[1]
                entry = stats[name] = InputStats(
                    torch.zeros(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64) if hessian else None, 0
                )
            entry.sq_norm += (x * x).sum(dim=0)
            if entry.hessian is not None:
                entry.hessian += x.t() @ x
            entry.tokens += x.shape[0]

        return record

    for name, module in layers.items():
        handles.append(module.register_forward_pre_hook(hook(name, module)))
    try:
        with torch.inference_mode():
            for batch in calibration:
                call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(layers) - set(stats))
    if missing:
        raise ScheduleError(f"layers {missing[:3]} saw no calibration input (are they used in forward?).")
    return stats


def scores(criterion: str, weight: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
    """Importance of each weight of an ``(out, in)`` matrix (higher is kept)."""
    w = weight.detach().abs().to(torch.float32)
    if criterion == "magnitude":
        return w
    if criterion == "wanda":
        if stats is None:
            raise ScheduleError("criterion 'wanda' needs calibration inputs.")
        return w * stats.norm.to(torch.float32).unsqueeze(0)
    raise ScheduleError(f"`criterion` must be one of {CRITERIA} here, but got criterion={criterion!r}.")


def keep_mask(score: torch.Tensor, amount: float, pattern: str | None = None, *, per_row: bool = True) -> torch.Tensor:
    """Boolean mask of the weights kept: the highest scores, ``1 - amount`` of each row (or
    of the whole matrix with ``per_row=False``), or N of every M along each row."""
    out, cols = score.shape
    if pattern is not None:
        n, m = parse_pattern(pattern)
        if cols % m:
            raise ScheduleError(f"pattern {pattern!r} needs an input size that is a multiple of {m}, but got {cols}.")
        groups = score.reshape(out, cols // m, m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(2, groups.topk(n, dim=2).indices, True)
        return keep.reshape(out, cols)
    if per_row:
        k = round(amount * cols)
        if k == 0:
            return torch.ones_like(score, dtype=torch.bool)
        drop = score.argsort(dim=1, stable=True)[:, :k]
        keep = torch.ones_like(score, dtype=torch.bool)
        keep.scatter_(1, drop, False)
        return keep
    k = round(amount * score.numel())
    keep = torch.ones(score.numel(), dtype=torch.bool)
    if k:
        keep[score.reshape(-1).argsort(stable=True)[:k]] = False
    return keep.reshape(out, cols)


def sparsegpt_(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    amount: float,
    pattern: str | None = None,
    *,
    blocksize: int = 128,
    damp: float = 0.01,
) -> torch.Tensor:
    """SparseGPT on one ``(out, in)`` matrix, in place: prune ``amount`` (or ``pattern``) and
    update the kept weights with the OBS correction. Returns the keep mask."""
    W = weight.detach().to(torch.float64).clone()
    rows, cols = W.shape
    H = hessian.to(torch.float64).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    n_m = parse_pattern(pattern) if pattern is not None else None
    if n_m is not None and cols % n_m[1]:
        raise ScheduleError(f"pattern {pattern!r} needs an input size that is a multiple of {n_m[1]}, but got {cols}.")
    if n_m is not None and blocksize % n_m[1]:
        raise ScheduleError(f"blocksize must be a multiple of M for pattern {pattern!r}, but got blocksize={blocksize}.")
    keep = torch.ones_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag = torch.diag(Hinv1)
        if n_m is None:
            err = W1**2 / diag.unsqueeze(0) ** 2
            k = round(amount * err.numel())
            prune1 = torch.zeros_like(W1, dtype=torch.bool)
            if k:
                prune1.view(-1)[err.reshape(-1).argsort(stable=True)[:k]] = True
        else:
            prune1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if n_m is not None and i % n_m[1] == 0:
                n, m = n_m
                err = W1[:, i : i + m] ** 2 / diag[i : i + m].unsqueeze(0) ** 2
                prune1.scatter_(1, i + err.topk(m - n, dim=1, largest=False).indices, True)
            q = w.clone()
            q[prune1[:, i]] = 0.0
            Q1[:, i] = q
            e = (w - q) / d
            W1[:, i:] -= e.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = e
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = ~prune1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    with torch.no_grad():
        weight.copy_(W.to(weight.dtype) * keep)
    return keep


def _set_masked(module: nn.Module, keep: torch.Tensor, new_weight: torch.Tensor | None = None) -> None:
    """Zero the weights outside ``keep`` with a ``torch.nn.utils.prune`` mask (it holds through
    fine-tuning and is made permanent by the executor); ``new_weight`` replaces the values."""
    from torch.nn.utils import prune

    mask = keep.t() if _is_conv1d(module) else keep
    orig = getattr(module, "weight_orig", None)
    target = orig if isinstance(orig, torch.Tensor) else weight_matrix(module)
    if target is not orig and _is_conv1d(module):
        target = target.t()
    if new_weight is not None:
        with torch.no_grad():
            target.copy_(new_weight.t() if _is_conv1d(module) else new_weight)
    prune.custom_from_mask(module, "weight", mask.to(target.dtype))


def _current(module: nn.Module) -> torch.Tensor:
    """The weight as the model uses it now, masks applied: ``(out, in)``."""
    orig = getattr(module, "weight_orig", None)
    if isinstance(orig, torch.Tensor):
        mask = getattr(module, "weight_mask")  # noqa: B009 - set by torch.nn.utils.prune
        assert isinstance(mask, torch.Tensor)
        weight = orig * mask
        return weight.t() if _is_conv1d(module) else weight
    return weight_matrix(module)


def prune_linears_(
    model: nn.Module,
    plans: dict[str, tuple[float, str | None]],
    criterion: str,
    calibration: Sequence[Any] | None,
    *,
    stats: dict[str, InputStats] | None = None,
) -> None:
    """Prune the named linear layers of ``model`` in place: ``plans`` maps a layer to
    ``(amount, pattern)``. Masks stay as ``torch.nn.utils.prune`` masks (make them permanent
    with ``prune.remove`` or the executor). ``stats`` (Wanda): the unpruned model's input
    statistics, to skip the calibration pass."""
    if criterion not in CRITERIA:
        raise ScheduleError(f"`criterion` must be one of {CRITERIA}, but got criterion={criterion!r}.")
    layers = {name: model.get_submodule(name) for name in plans}
    for name, (_amount, pattern) in plans.items():
        cols = weight_matrix(layers[name]).shape[1]
        if pattern is not None and cols % parse_pattern(pattern)[1]:
            m = parse_pattern(pattern)[1]
            raise ScheduleError(
                f"pattern {pattern!r} on layer {name!r} needs its input size to be a multiple of {m}, but it is {cols}."
            )
    if criterion != "magnitude" and not calibration and stats is None:
        raise ScheduleError(
            f"criterion {criterion!r} needs calibration inputs: pass calibration= (a task's calibration_inputs)."
        )
    if criterion == "sparsegpt":
        assert calibration is not None
        for group in _in_block_order(model, list(layers)):
            found = collect_input_stats(model, {n: layers[n] for n in group}, calibration, hessian=True)
            for name in group:
                amount, pattern = plans[name]
                current = _current(layers[name]).detach().clone()
                hessian = found[name].hessian
                assert hessian is not None
                # The paper's 128-column blocks are for 4096-wide layers; a small layer gets at
                # least 4 blocks so the mask is chosen adaptively as the update goes.
                m = parse_pattern(pattern)[1] if pattern is not None else 1
                blocksize = max(m, min(128, current.shape[1] // 4) // m * m)  # N:M groups never straddle blocks
                keep = sparsegpt_(current, 2 * hessian / found[name].tokens, amount, pattern, blocksize=blocksize)
                _set_masked(layers[name], keep, current)
        return
    if criterion == "wanda" and stats is None:
        assert calibration is not None
        stats = collect_input_stats(model, layers, calibration)
    for name, (amount, pattern) in plans.items():
        score = scores(criterion, _current(layers[name]), None if stats is None else stats[name])
        _set_masked(layers[name], keep_mask(score, amount, pattern, per_row=criterion != "magnitude"))


def _in_block_order(model: nn.Module, names: Iterable[str]) -> list[list[str]]:
    """Layers grouped by the decoder block that holds them, in the model's order (layers
    outside every block last, as one group)."""
    blocks = decoder_blocks(model)
    groups: dict[int, list[str]] = {}
    for name in names:
        index = next((i for i, b in enumerate(blocks) if name.startswith(b + ".")), len(blocks))
        groups.setdefault(index, []).append(name)
    return [groups[i] for i in sorted(groups)]


def sparse_bytes(weight_numel: int, zeros: int, pattern: str | None, value_bytes: int = 4) -> int:
    """Bytes to store a pruned matrix: dense values when nothing is pruned; kept values plus
    N:M index metadata (``ceil(log2(M))`` bits per kept value) for a pattern; kept values
    plus a bitmap otherwise."""
    kept = weight_numel - zeros
    if zeros == 0:
        return weight_numel * value_bytes
    if pattern is not None:
        _, m = parse_pattern(pattern)
        return kept * value_bytes + math.ceil(kept * math.ceil(math.log2(m)) / 8)
    return kept * value_bytes + math.ceil(weight_numel / 8)


# ---------------------------------------------------------------------------- masks
def masked_params(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (module, parameter name) pairs that carry a ``torch.nn.utils.prune`` mask."""
    out = []
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                names = (
                    [h._tensor_name for h in hook._pruning_methods]
                    if isinstance(hook, prune.PruningContainer)
                    else [hook._tensor_name]
                )
                out += [(module, n) for n in dict.fromkeys(names)]
    return out


def make_permanent(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Fold every prune mask into its weight (no ``weight_orig``/hooks left); the pairs it folded."""
    params = masked_params(model)
    for module, name in params:
        prune.remove(module, name)
    return params


# ---------------------------------------------------------------------------- the executor's magnitude masks
class L1Unstructured(prune.L1Unstructured):
    """The executor's unstructured magnitude pruning: ``torch.nn.utils.prune.L1Unstructured``,
    the same weights zeroed, found by ``torch.kthvalue`` instead of ``torch.topk``: 2.6-2.7x
    faster on one thread (half of a 768x3072 matrix: 2.64x [2.57, 2.73], timed in alternation
    by ``python scripts/bench_l1_mask.py``). Where several weights tie at the threshold, the
    ones first in memory order go (topk's choice among ties is unspecified)."""

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        numel = t.nelement()
        count = self.amount if isinstance(self.amount, int) else round(self.amount * numel)
        if not 0 <= count <= numel:
            raise ValueError(f"cannot prune {count} of {numel} weights")
        mask = default_mask.clone(memory_format=torch.contiguous_format)
        if count == 0:
            return mask
        magnitude = t.detach().abs().flatten()
        threshold = torch.kthvalue(magnitude, count).values
        drop = magnitude < threshold
        ties = (magnitude == threshold).nonzero().flatten()
        drop[ties[: count - int(drop.sum())]] = True
        mask.view(-1)[drop] = 0
        return mask
