"""Schedules the executor applies without tracing the model.

Tracing a decoder language model with Torch-Pruning can take minutes, and none of these needs
the graph:

- calibration criteria (Wanda, SparseGPT) and N:M patterns on linear layers, and language
  models pruned only unstructured: :mod:`autoprune.oneshot` masks;
- the structure of a decoder (query heads, MLP channels, whole blocks):
  :mod:`autoprune.decoder`, whose couplings are known from the model's layout.

:func:`autoprune.apply_schedule` routes a schedule here when :func:`is_decoder_structure` or
:func:`is_linear_oneshot` says so.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from autoprune._errors import ScheduleError
from autoprune.decoder import (
    StructureError,
    allowed_head_counts,
    decoder_layout,
    prune_decoder_,
    structure_scores,
)
from autoprune.oneshot import make_permanent, prunable_linears, prune_linears_
from autoprune.schedule import LayerPlan, Schedule, step_amounts

__all__ = ["apply_decoder_structure", "apply_linear_oneshot", "is_decoder_structure", "is_linear_oneshot"]

FineTune = Callable[[nn.Module, int], None]
StepCallback = Callable[[nn.Module, int, int], None]


def is_linear_oneshot(schedule: Schedule, model: nn.Module) -> bool:
    """Schedules pruned by :mod:`autoprune.oneshot` without tracing: a calibration criterion,
    an N:M pattern, or a language model (it has output embeddings) pruned only unstructured
    (tracing a decoder with Torch-Pruning can take minutes and is not needed for masks)."""
    if schedule.criterion != "magnitude" or any(p.pattern is not None for p in schedule.layers.values()):
        return True
    get_head = getattr(model, "get_output_embeddings", None)
    is_lm = callable(get_head) and get_head() is not None
    if not is_lm:  # a decoder autoprune.decoder knows (GPT-2 for classification too): no tracing either
        try:
            decoder_layout(model)
            is_lm = True
        except StructureError:
            pass
    active = schedule.active_layers()
    return (
        is_lm
        and bool(active)
        and not schedule.global_unstructured
        and all(p.method == "unstructured" for p in active.values())
    )


def apply_linear_oneshot(
    model: nn.Module,
    schedule: Schedule,
    calibration: Sequence[Any] | None,
    fine_tune: FineTune | None,
    on_step: StepCallback | None,
) -> nn.Module:
    """A schedule with a calibration criterion or an N:M pattern: every active plan is an
    unstructured plan on a linear layer, pruned by :func:`autoprune.oneshot.prune_linears_`
    at each step's cumulative amount (an N:M pattern at the last step)."""
    pruned = copy.deepcopy(model)
    linears = prunable_linears(pruned)
    plans = {}
    for name, plan in schedule.layers.items():
        if name in schedule.ignore or plan.method == "none" or plan.amount == 0:
            continue
        if plan.method != "unstructured":
            raise ScheduleError(
                f"criterion {schedule.criterion!r} and N:M patterns prune unstructured plans only, but layer {name!r} "
                f"has method={plan.method!r}; use criterion='magnitude' without patterns for structured pruning."
            )
        if name not in linears:
            known = ", ".join(list(linears)[:6])
            raise ScheduleError(
                f"layer {name!r} is not a prunable linear layer of this model (criterion {schedule.criterion!r}); "
                f"prunable layers include: {known}."
            )
        plans[name] = plan
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(schedule.seed)
        for step in range(1, schedule.steps + 1):
            last = step == schedule.steps
            wanted = {
                name: (
                    step_amounts(plan.amount, schedule.steps, schedule.shape)[step - 1],
                    plan.pattern if last else None,
                )
                for name, plan in plans.items()
            }
            wanted = {name: ap for name, ap in wanted.items() if ap[0] > 0 or ap[1] is not None}
            if wanted:
                prune_linears_(pruned, wanted, schedule.criterion, calibration)
            if fine_tune is not None and schedule.fine_tune_steps > 0:
                fine_tune(pruned, schedule.fine_tune_steps)
            if on_step is not None:
                on_step(pruned, step, schedule.steps)
    make_permanent(pruned)
    return pruned


# ---------------------------------------------------------------------------- decoder structure
def is_decoder_structure(schedule: Schedule, model: nn.Module) -> bool:
    """Schedules applied by :mod:`autoprune.decoder` (no tracing: a decoder's couplings are
    known, and tracing a Llama with Torch-Pruning takes minutes): blocks to remove, or, on a
    decoder it knows, any structured plan or no plan at all (unstructured-only schedules go
    to :mod:`autoprune.oneshot`)."""
    if schedule.remove_blocks:
        return True
    try:
        decoder_layout(model)
    except StructureError:
        return False
    active = schedule.active_layers()
    return not active or any(p.method == "structured" for p in active.values())


def _decoder_targets(
    schedule: Schedule, model: nn.Module
) -> tuple[dict[int, float], dict[int, float], list[int], dict[str, LayerPlan]]:
    """(heads, channels, blocks removed, unstructured plans) of a decoder schedule."""
    layout = decoder_layout(model)
    blocks = layout.block_names(model)
    attention = {layout.attention_name(b): i for i, b in enumerate(blocks)}
    mlp = {layout.mlp_name(b): i for i, b in enumerate(blocks)}
    heads: dict[int, float] = {}
    channels: dict[int, float] = {}
    unstructured: dict[str, LayerPlan] = {}
    for name, plan in schedule.layers.items():
        if name in schedule.ignore or plan.method == "none" or plan.amount == 0:
            continue
        if name in attention or name in mlp:
            if plan.method != "structured":
                raise ScheduleError(
                    f"layer {name!r} is a block's {'attention' if name in attention else 'MLP'}: its plan must be "
                    f"structured (a fraction of its {'query heads' if name in attention else 'channels'}), "
                    f"but got method={plan.method!r}; name its linear layers for unstructured pruning."
                )
            (heads if name in attention else channels)[(attention | mlp)[name]] = plan.amount
        elif plan.method == "unstructured":
            unstructured[name] = plan
        else:
            raise ScheduleError(
                f"on this decoder a structured plan names a block's attention ({layout.attention_name(blocks[0])!r}) "
                f"or MLP ({layout.mlp_name(blocks[0])!r}), but got layer {name!r}."
            )
    unknown = [b for b in schedule.remove_blocks if b not in blocks]
    if unknown:
        raise StructureError(
            f"remove_blocks names {unknown[0]!r}, which is not a decoder block of this model "
            f"({blocks[0]!r} .. {blocks[-1]!r})"
        )
    return heads, channels, [blocks.index(b) for b in schedule.remove_blocks], unstructured


def _step_heads(total: float, step_amount: float, heads: int, current: Any) -> float:
    """Head amount (of the current heads) for one step of an iterative schedule: the
    cumulative target rounded up to a count grouped-query attention can hold."""
    if step_amount >= total:
        keep = heads - round(total * heads)
    else:
        target = heads - round(step_amount * heads)
        keep = min((k for k in allowed_head_counts(current) if k >= target), default=current.heads)
    return 1.0 - keep / current.heads


def apply_decoder_structure(
    model: nn.Module,
    schedule: Schedule,
    calibration: Sequence[Any] | None,
    fine_tune: FineTune | None,
    on_step: StepCallback | None,
) -> nn.Module:
    """Heads, MLP channels and blocks of a decoder (:func:`autoprune.decoder.prune_decoder_`),
    then the schedule's unstructured plans (by its criterion) at its last step.

    Blocks are removed at the first step; widths follow the schedule's shape, each step
    ranked again on the current model; unstructured plans (named as in the unpruned model)
    are applied once, at the last step, before its fine-tuning."""
    heads, channels, remove, unstructured = _decoder_targets(schedule, model)
    pruned = copy.deepcopy(model)
    layout = decoder_layout(pruned)
    original = layout.shapes(pruned)
    prune_decoder_(copy.deepcopy(model), heads=heads, channels=channels, remove=remove,
                   round_to=schedule.round_to)  # fmt: skip  # every plan is checked before any work
    kept = [i for i in range(len(original)) if i not in set(remove)]
    renamed: dict[str, LayerPlan] = {}
    for name, plan in unstructured.items():
        prefix = f"{layout.blocks_path}."
        if name.startswith(prefix) and name[len(prefix) :].split(".")[0].isdigit():
            old = int(name[len(prefix) :].split(".")[0])
            if old not in kept:
                continue
            name = f"{prefix}{kept.index(old)}{name[len(prefix) + len(str(old)) :]}"
        renamed[name] = plan
    linears = prunable_linears(pruned)
    missing = [n for n in unstructured if n not in linears]
    if missing:
        raise ScheduleError(f"layer {missing[0]!r} is not a prunable linear layer of this model.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(schedule.seed)
        for step in range(1, schedule.steps + 1):
            last = step == schedule.steps
            if step == 1 and remove:
                prune_decoder_(pruned, remove=remove)  # blocks go first: their widths are never ranked
            current = layout.shapes(pruned)
            step_heads, step_channels = {}, {}
            for new, old in enumerate(kept):
                if heads.get(old):
                    cumulative = step_amounts(heads[old], schedule.steps, schedule.shape)[step - 1]
                    step_heads[new] = _step_heads(heads[old], cumulative, original[old].heads, current[new])
                if channels.get(old):
                    cumulative = step_amounts(channels[old], schedule.steps, schedule.shape)[step - 1]
                    keep = original[old].intermediate - round(cumulative * original[old].intermediate)
                    step_channels[new] = max(0.0, 1.0 - keep / current[new].intermediate)
            scores = structure_scores(pruned, calibration) if (step_heads or step_channels) else None
            prune_decoder_(pruned, heads={k: v for k, v in step_heads.items() if v > 0},
                           channels={k: v for k, v in step_channels.items() if v > 0},
                           scores=scores, round_to=schedule.round_to)  # fmt: skip
            if last and renamed:
                wanted = {n: (p.amount, p.pattern) for n, p in renamed.items()}
                prune_linears_(pruned, wanted, schedule.criterion, calibration)
            if fine_tune is not None and schedule.fine_tune_steps > 0:
                fine_tune(pruned, schedule.fine_tune_steps)
            if on_step is not None:
                on_step(pruned, step, schedule.steps)
    make_permanent(pruned)
    return pruned
