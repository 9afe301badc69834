"""Allocation: spread pruning over the units by their sensitivity, for a global target."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from autoprune._errors import ScheduleError
from autoprune.evaluation import count_macs
from autoprune.executor import apply_schedule
from autoprune.sensitivity._result import Sensitivity
from autoprune.sensitivity._scan import pruning_only, unit_space
from autoprune.space import SearchSpace

__all__ = ["allocate", "allocations", "greedy_path", "macs_meter", "warm_starts"]


def greedy_path(
    sensitivity: Sensitivity,
    *,
    resource: str = "macs",
    caps: Mapping[str, float] | None = None,
    step: float = 0.05,
) -> list[dict[str, float]]:
    """The greedy sequence of allocations, from nothing pruned to every unit at its cap:
    each one adds ``step`` to the unit whose next step loses the least accuracy per unit of
    ``resource`` saved (ties: the less pruned unit first, then space order).

    ``caps`` (unit -> largest amount; default: the largest scanned amount) also chooses the
    units: only structured curves of units in it take part.

    With ``resource="latency"`` a step whose measured saving is nil (a unit too small to
    time, or a noisy point) is ranked by its MACs saving after every step that saves time,
    so the path still reaches every unit's cap.
    """
    if not 0 < step < 1:
        raise ScheduleError(f"`0 < step < 1` must hold, but got step={step!r}.")
    structured = [c for c in sensitivity.curves if c.method == "structured" and c.amounts]
    limits = {c.unit: max(c.amounts) for c in structured}
    if caps is not None:
        limits = {u: min(limits[u], float(cap)) for u, cap in caps.items() if u in limits}
    current = dict.fromkeys(limits, 0.0)
    order = {u: i for i, u in enumerate(limits)}
    path = [dict(current)]
    while True:
        best: tuple[int, float, float, int, str, float] | None = None
        for unit, amount in current.items():
            nxt = round(min(amount + step, limits[unit]), 6)
            if nxt <= amount + 1e-9:
                continue
            gain = sensitivity.saved_at(unit, nxt, resource) - sensitivity.saved_at(unit, amount, resource)
            tier = 0
            if gain <= 0 and resource != "macs":
                gain, tier = sensitivity.saved_at(unit, nxt) - sensitivity.saved_at(unit, amount), 1
            if gain <= 0:
                continue
            loss = sensitivity.drop_at(unit, nxt) - sensitivity.drop_at(unit, amount)
            key = (tier, loss / gain, amount, order[unit], unit, nxt)
            if best is None or key[:4] < best[:4]:
                best = key
        if best is None:
            return path
        current[best[4]] = best[5]
        path.append(dict(current))


def allocate(
    sensitivity: Sensitivity,
    target: float,
    *,
    resource: str = "macs",
    caps: Mapping[str, float] | None = None,
    step: float = 0.05,
    measure: Callable[[dict[str, float]], float] | None = None,
) -> dict[str, float]:
    """Per-unit amounts that save ``target`` (a fraction of the model's MACs or latency)
    at the least estimated accuracy loss, by the greedy path of :func:`greedy_path`.

    Without ``measure`` the saving is the additive estimate of the curves; with
    ``measure(amounts) -> fraction saved`` (e.g. :func:`macs_meter`) the first allocation on
    the path that really saves ``target`` is found by bisection. When the target cannot be
    reached, every unit ends at its cap.

    Example:
        >>> from autoprune.sensitivity import Curve, Sensitivity
        >>> sens = Sensitivity(curves=(Curve("a", "structured", (0.5,), (90.0,), (50,)),
        ...                            Curve("b", "structured", (0.5,), (60.0,), (50,))),
        ...                    baseline_score=100.0, reference_score=100.0, baseline_macs=100,
        ...                    seconds=0.0, calibrated=False)
        >>> allocate(sens, 0.5, step=0.25)  # b is the more sensitive unit
        {'a': 0.5, 'b': 0.0}
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target < 1:
        raise ScheduleError(f"`0 <= target < 1` must hold, but got target={target!r}.")
    path = greedy_path(sensitivity, resource=resource, caps=caps, step=step)
    saved = measure or (lambda amounts: sensitivity.saved_fraction(amounts, resource))
    if target <= 0:
        return path[0]
    lo, hi = 0, len(path) - 1  # path[hi] is the answer if any is
    while lo < hi:
        mid = (lo + hi) // 2
        if saved(path[mid]) >= target - 1e-9:
            hi = mid
        else:
            lo = mid + 1
    return path[hi]


def allocations(
    sensitivity: Sensitivity,
    targets: Sequence[float] = (0.25, 0.5, 0.75),
    **options: Any,
) -> list[dict[str, float]]:
    """:func:`allocate` for several targets (the warm starts of a study)."""
    return [allocate(sensitivity, t, **options) for t in targets]


def warm_starts(
    space: SearchSpace,
    sensitivity: Sensitivity,
    targets: Sequence[float] = (0.25, 0.5, 0.75),
    *,
    resource: str = "macs",
    measure: Callable[[dict[str, float]], float] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Trial params for ``study.enqueue_trial``, one per target (duplicates dropped): the
    sensitivity-greedy allocation of each target, capped at the space's units, on its grid.

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
