"""Allocation on a space: the sensitivity allocations at MACs targets as trial params (the study's sensitivity references) and
real MAC counts for :func:`allocate` (which, reading only a :class:`Sensitivity`, lives with it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from autoprune.evaluation import count_macs
from autoprune.executor import apply_schedule
from autoprune.sensitivity._result import Sensitivity, allocate, allocations, greedy_path  # the last three: re-exported
from autoprune.sensitivity._scan import pruning_only, unit_space
from autoprune.space import SearchSpace

__all__ = ["allocate", "allocations", "greedy_path", "macs_meter", "sensitivity_allocations"]


def sensitivity_allocations(
    space: SearchSpace,
    sensitivity: Sensitivity,
    targets: Sequence[float] = (0.25, 0.5, 0.75),
    *,
    resource: str = "macs",
    measure: Callable[[dict[str, float]], float] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Trial params for ``study.enqueue_trial``, one per target (duplicates dropped): the
    sensitivity allocation of each target, capped at the space's units, on its grid.

    Args:
        space: the study's SearchSpace (its units were scanned).
        sensitivity: the scan.
        targets: fractions of the model's MACs (or latency) to save.
        resource: ``macs`` or ``latency`` (needs speedups in the scan).
        measure: see :func:`allocate` (e.g. :func:`macs_meter` for real MAC counts).
        **options: whole-schedule choices for :meth:`SearchSpace.params_for`.
    """
    caps = {u.key: u.max_amount for u in space.units if u.supports("structured")}
    out: list[dict[str, Any]] = []
    for target in targets:
        amounts = allocate(
            sensitivity, target, resource=resource, caps=caps, step=space.config.amount_step, measure=measure
        )
        params = space.params_for({u: a for u, a in amounts.items() if a > 0}, **options)
        if params not in out:
            out.append(params)
    return out


def macs_meter(model: nn.Module, example_inputs: Any, space: SearchSpace) -> Callable[[dict[str, float]], float]:
    """``measure(amounts) -> fraction of MACs removed``, counted on the pruned model that the
    space's schedule for those amounts produces (no fine-tuning), for :func:`allocate`."""
    base = count_macs(model, example_inputs)
    per_unit = unit_space(space)

    def measure(amounts: dict[str, float]) -> float:
        pruned = apply_schedule(model, pruning_only(per_unit, amounts), example_inputs=example_inputs)
        return 1.0 - count_macs(pruned, example_inputs) / base

    return measure
