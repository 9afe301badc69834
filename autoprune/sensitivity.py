"""Cheap before expensive: what each unit costs to prune, and where pruning should go.

:func:`scan_sensitivity` prunes every unit of a :class:`~autoprune.space.SearchSpace` alone at
a few amounts, re-estimates the BatchNorm statistics on a few training batches (``calibrate``;
the adaptive-BN evaluation of EagleEye, Li et al. 2020, which ranks pruned candidates close
to how they rank after fine-tuning), scores it with ``evaluate`` and records the MACs it
removes (and, with ``speedup``, how much faster it is). No fine-tuning: one
``apply_schedule`` plus one calibrate and one evaluate per point.

:func:`allocate` spreads pruning by that sensitivity for a global target, greedily: it
repeatedly takes the (unit, next amount) step that loses the least accuracy per MAC (or
latency) saved, reading the interpolated curves, until the target reduction is reached (in
the spirit of AIMET's greedy compression-ratio selection and NetAdapt). The per-unit amounts
it returns become a warm-start trial with :meth:`SearchSpace.params_for`.

:func:`screen` scores a schedule cheaply (a short fine-tune, BatchNorm re-estimated) so that
a study can spend the full fine-tune only on promising candidates.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from autoprune._errors import ScheduleError
from autoprune.config import SpaceConfig
from autoprune.evaluation import count_macs
from autoprune.executor import apply_schedule
from autoprune.preflight import LayerInfo
from autoprune.schedule import Schedule
from autoprune.space import SearchSpace, Unit

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Curve",
    "Sensitivity",
    "allocate",
    "allocations",
    "schedule_alone",
    "greedy_path",
    "macs_meter",
    "scan_sensitivity",
    "screen",
    "warm_starts",
    "RESOURCES",
    "SENSITIVITY_VERSION",
]

_logger = logging.getLogger(__name__)

SENSITIVITY_VERSION = 1
RESOURCES = ("macs", "latency")
Evaluate = Callable[[nn.Module], float]
Calibrate = Callable[[nn.Module], Any]


@dataclass(frozen=True)
class Curve:
    """One unit pruned alone at a few amounts.

    Attributes:
        unit: the SearchSpace unit key.
        method: ``structured`` (or ``unstructured`` for units that cannot lose channels:
            their MACs do not change, so they get accuracy only).
        amounts: the amounts asked of the unit (capped at its safe maximum).
        scores: ``evaluate`` after pruning (and ``calibrate``), one per amount.
        macs_removed: MACs of the unpruned model minus MACs of the pruned one (one sample).
        speedups: ``speedup(model)`` of each pruned model (reference time / model time),
            when a ``speedup`` callable was given.
    """

    unit: str
    method: str
    amounts: tuple[float, ...]
    scores: tuple[float, ...]
    macs_removed: tuple[int, ...]
    speedups: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "method": self.method,
            "amounts": list(self.amounts),
            "scores": list(self.scores),
            "macs_removed": list(self.macs_removed),
            "speedups": None if self.speedups is None else list(self.speedups),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Curve:
        speedups = data.get("speedups")
        return cls(
            unit=str(data["unit"]),
            method=str(data["method"]),
            amounts=tuple(float(a) for a in data["amounts"]),
            scores=tuple(float(s) for s in data["scores"]),
            macs_removed=tuple(int(m) for m in data["macs_removed"]),
            speedups=None if speedups is None else tuple(float(s) for s in speedups),
        )


@dataclass(frozen=True)
class Sensitivity:
    """The result of :func:`scan_sensitivity`.

    Attributes:
        curves: one :class:`Curve` per scanned unit, in the space's order.
        baseline_score: ``evaluate`` of the unpruned model as it is.
        reference_score: the unpruned model scored the way the curves are (calibrated when
            ``calibrate`` was given); drops are measured from it.
        baseline_macs: MACs of the unpruned model (one sample).
        seconds: how long the scan took.
        calibrated: whether BatchNorm statistics were re-estimated before scoring.
    """

    curves: tuple[Curve, ...]
    baseline_score: float
    reference_score: float
    baseline_macs: int
    seconds: float
    calibrated: bool

    # ------------------------------------------------------------------ reading the curves
    def curve(self, unit: str, method: str = "structured") -> Curve | None:
        """The curve of ``unit`` for ``method`` (None when it was not scanned)."""
        return next((c for c in self.curves if c.unit == unit and c.method == method), None)

    @property
    def units(self) -> list[str]:
        return list(dict.fromkeys(c.unit for c in self.curves))

    def drop_at(self, unit: str, amount: float, method: str = "structured") -> float:
        """Accuracy drop of ``unit`` pruned alone at ``amount``, interpolated linearly from
        (0, 0) through the scanned points and made non-decreasing (a point scoring above a
        smaller amount is measurement noise, not a gain from pruning more)."""
        curve = self._curve(unit, method)
        drops = [max(0.0, self.reference_score - s) for s in curve.scores]
        return _interpolate(curve.amounts, _running_max(drops), amount)

    def saved_at(self, unit: str, amount: float, resource: str = "macs") -> float:
        """Fraction of the model's MACs (or latency) that pruning ``unit`` alone at ``amount``
        saves, interpolated linearly from (0, 0) through the scanned points."""
        curve = self._curve(unit, "structured")
        if resource == "macs":
            saved = [m / self.baseline_macs if self.baseline_macs else 0.0 for m in curve.macs_removed]
        elif resource == "latency":
            if curve.speedups is None:
                raise ScheduleError("resource='latency' needs a scan with a `speedup` callable; this one has none.")
            saved = [1.0 - 1.0 / s if s > 0 else 0.0 for s in curve.speedups]
        else:
            raise ScheduleError(f"`resource` must be one of {RESOURCES}, but got resource={resource!r}.")
        return _interpolate(curve.amounts, _running_max(saved), amount)

    def saved_fraction(self, amounts: Mapping[str, float], resource: str = "macs") -> float:
        """The additive estimate of the fraction saved by ``{unit: amount}`` together (each
        unit's saving alone, summed). It overestimates when neighbouring units are pruned
        together (a layer loses input and output channels); :func:`allocate` takes a
        ``measure`` callable that counts for real."""
        return sum(self.saved_at(u, a, resource) for u, a in amounts.items() if self.curve(u) is not None and a > 0)

    def allocate(
        self,
        target: float,
        *,
        resource: str = "macs",
        caps: Mapping[str, float] | None = None,
        step: float = 0.05,
        measure: Callable[[dict[str, float]], float] | None = None,
    ) -> dict[str, float]:
        """See :func:`allocate`."""
        return allocate(self, target, resource=resource, caps=caps, step=step, measure=measure)

    def _curve(self, unit: str, method: str) -> Curve:
        curve = self.curve(unit, method)
        if curve is None:
            scanned = sorted(f"{c.unit}:{c.method}" for c in self.curves)
            raise ScheduleError(f"no {method} curve for unit {unit!r} in the scan; scanned: {scanned[:8]}.")
        return curve

    # ------------------------------------------------------------------ tables and storage
    def table(self) -> pd.DataFrame:
        """One row per scanned point: unit, method, amount, score, drop, macs_removed,
        macs_fraction, speedup (NaN where not measured)."""
        import pandas as pd

        rows = []
        for c in self.curves:
            for i, amount in enumerate(c.amounts):
                rows.append(
                    {
                        "unit": c.unit,
                        "method": c.method,
                        "amount": amount,
                        "score": c.scores[i],
                        "drop": self.reference_score - c.scores[i],
                        "macs_removed": c.macs_removed[i],
                        "macs_fraction": c.macs_removed[i] / self.baseline_macs if self.baseline_macs else 0.0,
                        "speedup": c.speedups[i] if c.speedups is not None else math.nan,
                    }
                )
        return pd.DataFrame(rows, columns=["unit", "method", "amount", "score", "drop", "macs_removed",
                                           "macs_fraction", "speedup"])  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (e.g. for a study's user attributes)."""
        return {
            "version": SENSITIVITY_VERSION,
            "baseline_score": self.baseline_score,
            "reference_score": self.reference_score,
            "baseline_macs": self.baseline_macs,
            "seconds": self.seconds,
            "calibrated": self.calibrated,
            "curves": [c.to_dict() for c in self.curves],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sensitivity:
        version = data.get("version")
        if version != SENSITIVITY_VERSION:
            raise ScheduleError(f"sensitivity `version` must be {SENSITIVITY_VERSION}, but got version={version!r}.")
        return cls(
            curves=tuple(Curve.from_dict(c) for c in data["curves"]),
            baseline_score=float(data["baseline_score"]),
            reference_score=float(data["reference_score"]),
            baseline_macs=int(data["baseline_macs"]),
            seconds=float(data["seconds"]),
            calibrated=bool(data["calibrated"]),
        )


def _running_max(values: Sequence[float]) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(max(v, out[-1]) if out else v)
    return out


def _interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise linear through (0, 0) and the points; beyond the last point, its slope."""
    px, py = [0.0, *xs], [0.0, *ys]
    if x <= 0:
        return 0.0
    for i in range(1, len(px)):
        if x <= px[i] or i == len(px) - 1:
            x0, x1, y0, y1 = px[i - 1], px[i], py[i - 1], py[i]
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return py[-1]  # pragma: no cover - the loop always returns


# ---------------------------------------------------------------------------- the scan
def scan_sensitivity(
    model: nn.Module,
    example_inputs: Any,
    space_or_layers: SearchSpace | Sequence[LayerInfo],
    *,
    evaluate: Evaluate,
    calibrate: Calibrate | None = None,
    speedup: Callable[[nn.Module], float] | None = None,
    amounts: Sequence[float] = (0.25, 0.5, 0.75),
    seed: int = 0,
) -> Sensitivity:
    """Prune every unit alone at ``amounts`` and score it, without fine-tuning.

    Units that can lose channels are pruned structurally (amounts above a unit's safe
    maximum are replaced by it); units that cannot (the output layer) are pruned
    unstructured and get accuracy only (their MACs do not change).

    Args:
        model: the trained, unpruned model (not modified).
        example_inputs: inputs for tracing and for counting MACs.
        space_or_layers: the study's SearchSpace (its units are scanned), or the preflight
            (one unit per layer, the default space config).
        evaluate: ``evaluate(model) -> float``, higher is better (the task's validation).
        calibrate: ``calibrate(model)`` re-estimates BatchNorm statistics in place
            (``Task.calibrate``); without it models are scored as pruned.
        speedup: ``speedup(model) -> float`` (reference time / model time, e.g. a
            ``SpeedupMeter``'s ``measure(model).ratio``), called for structured points.
        amounts: amounts to scan, each in (0, 1).
        seed: the schedules' seed.

    Returns:
        The curves, the unpruned scores and MACs, and how long it took.

    Example:
        >>> import autoprune as ap
        >>> model, x = ap.zoo.get("cnn")
        >>> sens = scan_sensitivity(model, x, ap.prunable_layers(model, x),
        ...                         evaluate=lambda m: 0.0, amounts=(0.5,))
        >>> sens.curve("classifier.3") is None  # the output layer: no structured curve
        True
    """
    if not amounts or any(isinstance(a, bool) or not 0 < a < 1 for a in amounts):
        raise ScheduleError(f"`0 < amount < 1` must hold for every scanned amount, but got amounts={list(amounts)!r}.")
    start = time.perf_counter()
    space = _unit_space(space_or_layers)
    base_macs = count_macs(model, example_inputs)
    baseline_score = float(evaluate(model))
    reference_score = baseline_score
    if calibrate is not None:
        unpruned = copy.deepcopy(model)
        calibrate(unpruned)
        reference_score = float(evaluate(unpruned.eval()))
    curves = []
    for unit in space.units:
        method = "structured" if unit.supports("structured") else "unstructured"
        if not unit.supports(method):
            continue
        curves.append(
            _scan_unit(
                model, example_inputs, space, unit, method, amounts, seed, base_macs, evaluate, calibrate, speedup
            )
        )
    seconds = time.perf_counter() - start
    _logger.info("sensitivity scan: %d units in %.1f s", len(curves), seconds)
    return Sensitivity(
        curves=tuple(curves),
        baseline_score=baseline_score,
        reference_score=reference_score,
        baseline_macs=base_macs,
        seconds=round(seconds, 3),
        calibrated=calibrate is not None,
    )


def _unit_space(space_or_layers: SearchSpace | Sequence[LayerInfo]) -> SearchSpace:
    """A per-unit space (the sensitivity parametrization is built on the scan, not for it)."""
    if not isinstance(space_or_layers, SearchSpace):
        return SearchSpace(list(space_or_layers), SpaceConfig())
    if space_or_layers.config.parametrization == "unit":
        return space_or_layers
    layers = [info for unit in space_or_layers.units for info in unit.layers]
    return SearchSpace(layers, dataclasses.replace(space_or_layers.config, parametrization="unit"))


def schedule_alone(
    space: SearchSpace, unit: str, amount: float, method: str = "structured", *, seed: int = 0
) -> Schedule:
    """The schedule that prunes ``unit`` alone at ``amount`` in one step, without fine-tuning."""
    params = space.params_for({unit: amount}, method=method)
    schedule = space.schedule_from_params(params, seed=seed)
    return dataclasses.replace(schedule, steps=1, shape="oneshot", fine_tune_steps=0)


def _scan_unit(
    model: nn.Module,
    example_inputs: Any,
    space: SearchSpace,
    unit: Unit,
    method: str,
    amounts: Sequence[float],
    seed: int,
    base_macs: int,
    evaluate: Evaluate,
    calibrate: Calibrate | None,
    speedup: Callable[[nn.Module], float] | None,
) -> Curve:
    asked = sorted({round(min(a, unit.max_amount), 6) for a in amounts})
    done, scores, removed, speedups = [], [], [], []
    for amount in asked:
        schedule = schedule_alone(space, unit.key, amount, method, seed=seed)
        if not schedule.active_layers():
            continue  # below the space's grid
        pruned = apply_schedule(model, schedule, example_inputs=example_inputs)
        if calibrate is not None:
            calibrate(pruned)
        scores.append(float(evaluate(pruned.eval())))
        removed.append(base_macs - count_macs(pruned, example_inputs))
        if speedup is not None and method == "structured":
            speedups.append(float(speedup(pruned)))
        done.append(max(p.amount for p in schedule.layers.values()))
    return Curve(
        unit=unit.key,
        method=method,
        amounts=tuple(done),
        scores=tuple(scores),
        macs_removed=tuple(removed),
        speedups=tuple(speedups) if speedups else None,
    )


# ---------------------------------------------------------------------------- allocation
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
        best: tuple[float, float, int, str, float] | None = None
        for unit, amount in current.items():
            nxt = round(min(amount + step, limits[unit]), 6)
            if nxt <= amount + 1e-9:
                continue
            gain = sensitivity.saved_at(unit, nxt, resource) - sensitivity.saved_at(unit, amount, resource)
            if gain <= 0:
                continue
            loss = sensitivity.drop_at(unit, nxt) - sensitivity.drop_at(unit, amount)
            key = (loss / gain, amount, order[unit], unit, nxt)
            if best is None or key[:3] < best[:3]:
                best = key
        if best is None:
            return path
        current[best[3]] = best[4]
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
    unit_space = _unit_space(space)

    def measure(amounts: dict[str, float]) -> float:
        schedule = unit_space.schedule_from_params(unit_space.params_for(amounts))
        schedule = dataclasses.replace(schedule, steps=1, shape="oneshot", fine_tune_steps=0)
        pruned = apply_schedule(model, schedule, example_inputs=example_inputs)
        return 1.0 - count_macs(pruned, example_inputs) / base

    return measure


# ---------------------------------------------------------------------------- screening
def screen(
    model: nn.Module,
    schedule: Schedule,
    *,
    example_inputs: Any,
    evaluate: Evaluate,
    fine_tune: Callable[[nn.Module, int], None] | None = None,
    calibrate: Calibrate | None = None,
    fine_tune_steps: int = 0,
) -> tuple[float, nn.Module]:
    """Score ``schedule`` cheaply: prune with ``fine_tune_steps`` per step instead of the
    schedule's own (``schedule.with_fine_tune``), re-estimate BatchNorm, evaluate.

    Returns:
        ``(score, pruned model)``: the model has the schedule's final architecture, so its
        MACs, size and speed are the full schedule's; only the score is a cheap estimate.
    """
    cheap = schedule.with_fine_tune(fine_tune_steps)
    pruned = apply_schedule(model, cheap, example_inputs=example_inputs, fine_tune=fine_tune)
    if calibrate is not None:
        calibrate(pruned)
    return float(evaluate(pruned.eval())), pruned
