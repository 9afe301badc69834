"""The pruning-pattern panel's data: one layer of one trial, pruned again to show which
weights, rows and columns the schedule removed (the one part of the report that prunes)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from autoprune._errors import ConfigError
from autoprune.executor import apply_schedule
from autoprune.report._data import _schedule_or_none
from autoprune.schedule import Schedule
from autoprune.study import keys as study_keys
from autoprune.study._front import pareto_front
from autoprune.study._results import rebuild_task

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial
    from torch import nn

__all__ = ["MAX_PATTERN_COLS", "MAX_PATTERN_ROWS"]

# The pruning-pattern panels show at most this many rows and columns of a weight matrix;
# a 4096 x 4096 layer would make the page heavy without showing more of the pattern.
MAX_PATTERN_ROWS = 256
MAX_PATTERN_COLS = 288


# ---------------------------------------------------------------------------- pruning pattern
class _PatternInfo(NamedTuple):
    trial_number: int | None
    layer: str
    method: str  # "structured", "unstructured" or "none"
    amount: float
    before: np.ndarray | None  # rows = output channels, columns = inputs x kernel
    after: np.ndarray | None  # same shape; NaN where a channel was removed
    removed_rows: int
    removed_cols: int
    zeros: int  # zero weights among the kept ones (after)
    shape: tuple[int, ...]  # the weight's original shape
    shown: tuple[int, int]  # rows and columns shown (the matrix may be cropped)
    note: str | None


def _skipped_pattern(note: str, trial_number: int | None = None, layer: str = "") -> _PatternInfo:
    return _PatternInfo(trial_number, layer, "none", 0.0, None, None, 0, 0, 0, (), (0, 0), note)


def _pruned_fraction(schedule: Schedule, params: dict[str, int]) -> float:
    active = schedule.active_layers()
    total = sum(params.get(name, 1) for name in schedule.layers) or 1
    return sum(p.amount * params.get(name, 1) for name, p in active.items()) / total


def _default_pattern_trial(study: optuna.Study) -> FrozenTrial | None:
    """The Pareto trial whose schedule prunes the largest share of the prunable weights.

    Searched trials come before the reference ones (a uniform schedule shows less).
    """
    params = {str(i["name"]): int(i.get("params", 1)) for i in study.user_attrs.get("layers", []) if "name" in i}
    best = []
    for t in pareto_front(study):
        s = _schedule_or_none(t)
        if s is not None and s.active_layers():
            best.append((study_keys.trial_role(t) == study_keys.ROLE_SEARCH, _pruned_fraction(s, params), -t.number, t))
    return max(best, key=lambda x: x[:3])[3] if best else None


def _weight_of(model: nn.Module, layer: str) -> Any:
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        return None
    weight = getattr(module, "weight", None)
    if weight is None or getattr(weight, "dim", lambda: 0)() < 2:
        return None
    return weight


def _default_pattern_layer(model: nn.Module, schedule: Schedule) -> str | None:
    """The schedule's largest pruned layer with a 2D or 4D weight (ties: first by name)."""
    sizes = {}
    for name in schedule.active_layers():
        weight = _weight_of(model, name)
        if weight is not None and weight.dim() in (2, 4):
            sizes[name] = weight.numel()
    return max(sorted(sizes), key=lambda n: sizes[n]) if sizes else None


def _match_kept(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Which output rows and input columns of ``before`` survive in ``after``.

    Both are ``(out, in, k)`` arrays. Torch-Pruning removes whole slices and keeps the rest
    in order, so each surviving weight keeps its exact value: every non-zero weight of
    ``after`` votes for the ``(row, column)`` of ``before`` holding the same value.
    Returns ``None`` when the votes do not give an ordered, one-to-one matching.
    """
    o_b, i_b, k = before.shape
    o_a, i_a, _ = after.shape
    if (o_a, i_a) == (o_b, i_b):
        return np.arange(o_b), np.arange(i_b)
    flat = before.reshape(-1)
    order = np.argsort(flat, kind="stable")
    sorted_vals = flat[order]
    values = after.reshape(-1)
    pos = np.searchsorted(sorted_vals, values)
    pos = np.clip(pos, 0, len(sorted_vals) - 1)
    hit = (sorted_vals[pos] == values) & (values != 0)
    src = order[pos]
    src_row, src_col = src // (i_b * k), (src // k) % i_b
    dst = np.arange(values.size)
    dst_row, dst_col = dst // (i_a * k), (dst // k) % i_a

    def vote(dst_idx: np.ndarray, src_idx: np.ndarray, n_dst: int, n_src: int) -> np.ndarray | None:
        if n_dst == n_src:
            return np.arange(n_src)
        kept = np.full(n_dst, -1)
        for d in range(n_dst):
            mine = src_idx[hit & (dst_idx == d)]
            if mine.size:
                kept[d] = np.bincount(mine, minlength=n_src).argmax()
        if (kept < 0).any() or (np.diff(kept) <= 0).any():
            return None
        return kept

    rows = vote(dst_row, src_row, o_a, o_b)
    cols = vote(dst_col, src_col, i_a, i_b)
    if rows is None or cols is None:
        return None
    return rows, cols


def _pattern_from_weights(
    before_w: np.ndarray, after_w: np.ndarray, *, layer: str, method: str, amount: float, trial_number: int | None
) -> _PatternInfo:
    shape = tuple(before_w.shape)
    before3 = before_w.reshape(shape[0], shape[1], -1)
    after3 = after_w.reshape(after_w.shape[0], after_w.shape[1], -1)
    kept = _match_kept(before3, after3)
    if kept is None:
        return _skipped_pattern(
            f"cannot tell which channels of {layer!r} were kept (weights changed)", trial_number, layer
        )
    rows, cols = kept
    full = np.full(before3.shape, np.nan)
    full[np.ix_(rows, cols)] = after3
    before2 = before3.reshape(shape[0], -1)
    after2 = full.reshape(shape[0], -1)
    r, c = min(shape[0], MAX_PATTERN_ROWS), min(before2.shape[1], MAX_PATTERN_COLS)
    return _PatternInfo(
        trial_number=trial_number,
        layer=layer,
        method=method,
        amount=amount,
        before=before2[:r, :c],
        after=after2[:r, :c],
        removed_rows=shape[0] - len(rows),
        removed_cols=shape[1] - len(cols),
        zeros=int((after3 == 0).sum()),
        shape=shape,
        shown=(r, c),
        note=None,
    )


def _get_pattern_info(
    study: optuna.Study,
    *,
    trial_number: int | None = None,
    layer: str | None = None,
    model: nn.Module | None = None,
    example_inputs: Any = None,
) -> _PatternInfo:
    """A trial's layer weights before and after pruning (no fine-tuning).

    ``trial_number`` defaults to the Pareto trial that prunes most, ``layer`` to its largest
    pruned layer. The model is the task's (rebuilt from the study's task spec) unless
    ``model`` and ``example_inputs`` are given. A trial or layer that the user named and
    that does not exist raises :class:`~autoprune.ConfigError`; anything else that stops
    the pattern gives a note instead.
    """
    import torch

    if trial_number is None:
        chosen = _default_pattern_trial(study)
        if chosen is None:
            if layer is not None:
                # a layer the user named is never dropped in silence
                raise ConfigError(
                    f"cannot show layer {layer!r}: no Pareto trial of study {study.study_name!r} prunes anything yet; "
                    "name a trial with --trial N, or leave out --layer"
                )
            return _skipped_pattern("no Pareto trial prunes anything yet")
    else:
        numbers = [t.number for t in study.get_trials(deepcopy=False)]
        if trial_number not in numbers:
            raise ConfigError(
                f"trial {trial_number} is not in study {study.study_name!r} (trials 0..{max(numbers, default=-1)})"
            )
        chosen = study.get_trials(deepcopy=False)[numbers.index(trial_number)]
    schedule = _schedule_or_none(chosen)
    if schedule is None:
        if trial_number is not None or layer is not None:
            raise ConfigError(f"trial {chosen.number} has no schedule to show")
        return _skipped_pattern(f"trial {chosen.number} has no schedule", chosen.number)

    if model is None:
        spec = study.user_attrs.get("task")
        if not isinstance(spec, dict):
            return _skipped_pattern("the study carries no task spec, so its model cannot be rebuilt", chosen.number)
        try:
            task = rebuild_task(study)
        except Exception as exc:  # noqa: BLE001 - any failure means the section is skipped
            return _skipped_pattern(f"cannot rebuild task {spec.get('name')!r}: {exc}", chosen.number)
        model, example_inputs = task.model, task.example_inputs

    if layer is None:
        layer = _default_pattern_layer(model, schedule)
        if layer is None:
            return _skipped_pattern(f"trial {chosen.number} prunes no layer with a 2D or 4D weight", chosen.number)
    elif _weight_of(model, layer) is None:
        candidates = [n for n, m in model.named_modules() if _weight_of(model, n) is not None]
        raise ConfigError(f"layer {layer!r} has no 2D+ weight in the model; layers: {', '.join(candidates)}")

    plan = schedule.layers.get(layer)
    try:
        # The pattern is what pruning removes, so no fine-tuning (and no warning about it).
        no_tuning = dataclasses.replace(schedule, fine_tune_steps=0)
        pruned = apply_schedule(model, no_tuning, example_inputs=example_inputs)
    except Exception as exc:  # noqa: BLE001
        return _skipped_pattern(f"cannot re-apply the schedule of trial {chosen.number}: {exc}", chosen.number, layer)
    with torch.no_grad():
        before_w = _weight_of(model, layer).detach().cpu().numpy().astype(np.float64)
        after_param = _weight_of(pruned, layer)
        if after_param is None:
            return _skipped_pattern(f"layer {layer!r} is gone from the pruned model", chosen.number, layer)
        after_w = after_param.detach().cpu().numpy().astype(np.float64)
    return _pattern_from_weights(
        before_w,
        after_w,
        layer=layer,
        method=plan.method if plan is not None else "none",
        amount=float(plan.amount) if plan is not None else 0.0,
        trial_number=chosen.number,
    )
