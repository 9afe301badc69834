"""The scan's result: per-unit curves, read by interpolation, stored as JSON; and the greedy
allocation that reads only them (:func:`greedy_path`, :func:`allocate`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoprune._errors import ScheduleError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Curve", "Sensitivity", "RESOURCES", "SENSITIVITY_VERSION", "allocate", "allocations", "greedy_path"]

SENSITIVITY_VERSION = 1
RESOURCES = ("macs", "latency")


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
        unpruned_score: ``evaluate`` of the unpruned model as it is.
        reference_score: the unpruned model scored the way the curves are (calibrated when
            ``calibrate`` was given); drops are measured from it.
        unpruned_macs: MACs of the unpruned model (one sample).
        seconds: how long the scan took.
        calibrated: whether BatchNorm statistics were re-estimated before scoring.
    """

    curves: tuple[Curve, ...]
    unpruned_score: float
    reference_score: float
    unpruned_macs: int
    seconds: float
    calibrated: bool

    # ------------------------------------------------------------------ reading the curves
    def curve(self, unit: str, method: str = "structured") -> Curve | None:
        """The curve of ``unit`` for ``method`` (None when it was not scanned)."""
        return next((c for c in self.curves if c.unit == unit and c.method == method), None)

    @property
    def units(self) -> list[str]:
        return list(dict.fromkeys(c.unit for c in self.curves))

    @property
    def path_resource(self) -> str:
        """What the greedy allocation saves per accuracy lost: ``"latency"`` when every
        structured curve has measured speedups (a scan on the target), else ``"macs"``."""
        structured = [c for c in self.curves if c.method == "structured" and c.amounts]
        if structured and all(c.speedups is not None for c in structured):
            return "latency"
        return "macs"

    def drop_at(self, unit: str, amount: float, method: str = "structured") -> float:
        """Accuracy drop of ``unit`` pruned alone at ``amount``, interpolated linearly from
        (0, 0) through the scanned points and made non-decreasing (a point scoring above a
        smaller amount is measurement noise, not a gain from pruning more)."""
        curve = self._curve(unit, method)
        drops = [max(0.0, self.reference_score - s) for s in curve.scores]
        return _interpolate(curve.amounts, _running_max(drops), amount)

    def saved_at(self, unit: str, amount: float, resource: str = "macs") -> float:
        """Fraction of the model's MACs (or latency) that pruning ``unit`` alone at ``amount``
        saves, interpolated linearly from (0, 0) through the scanned points (for latency,
        through those that saved measurable time)."""
        curve = self._curve(unit, "structured")
        if resource == "macs":
            saved = [m / self.unpruned_macs if self.unpruned_macs else 0.0 for m in curve.macs_removed]
        elif resource == "latency":
            if curve.speedups is None:
                raise ScheduleError("resource='latency' needs a scan with a `speedup` callable; this one has none.")
            # Time saved comes in steps (kernels work in blocks of channels) and small savings
            # are within the timing's noise: a point that saved nothing measurable, below one
            # that did, is taken as on the line from (0, 0) to the first point that did.
            timed = [(a, v) for a, v in zip(curve.amounts, _running_max([1.0 - 1.0 / s if s > 0 else 0.0
                                                                           for s in curve.speedups]), strict=True)
                     if v > 0]  # fmt: skip
            if not timed:
                return 0.0
            return _interpolate([a for a, _ in timed], [v for _, v in timed], amount)
        else:
            raise ScheduleError(f"`resource` must be one of {RESOURCES}, but got resource={resource!r}.")
        return _interpolate(curve.amounts, _running_max(saved), amount)

    def saved_fraction(self, amounts: Mapping[str, float], resource: str = "macs") -> float:
        """The additive estimate of the fraction saved by ``{unit: amount}`` together (each
        unit's saving alone, summed). It overestimates when neighbouring units are pruned
        together (a layer loses input and output channels); :func:`allocate` takes a
        ``measure`` callable that counts for real."""
        return sum(self.saved_at(u, a, resource) for u, a in amounts.items() if self.curve(u) is not None and a > 0)

    def allocate(self, target: float, **options: Any) -> dict[str, float]:
        """:func:`autoprune.sensitivity.allocate` of this scan (``resource``, ``caps``, ``step``,
        ``measure`` as there)."""
        return allocate(self, target, **options)

    def greedy_path(self, **options: Any) -> list[dict[str, float]]:
        """:func:`autoprune.sensitivity.greedy_path` of this scan (``resource``, ``caps``,
        ``step`` as there)."""
        return greedy_path(self, **options)

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
                        "macs_fraction": c.macs_removed[i] / self.unpruned_macs if self.unpruned_macs else 0.0,
                        "speedup": c.speedups[i] if c.speedups is not None else math.nan,
                    }
                )
        return pd.DataFrame(rows, columns=["unit", "method", "amount", "score", "drop", "macs_removed",
                                           "macs_fraction", "speedup"])  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (e.g. for a study's user attributes)."""
        return {
            "version": SENSITIVITY_VERSION,
            "unpruned_score": self.unpruned_score,
            "reference_score": self.reference_score,
            "unpruned_macs": self.unpruned_macs,
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
            unpruned_score=float(data["unpruned_score"] if "unpruned_score" in data else data["baseline_score"]),
            reference_score=float(data["reference_score"]),
            unpruned_macs=int(data["unpruned_macs"] if "unpruned_macs" in data else data["baseline_macs"]),
            seconds=float(data["seconds"]),
            calibrated=bool(data["calibrated"]),
        )


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
        ...                    unpruned_score=100.0, reference_score=100.0, unpruned_macs=100,
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
    """:func:`allocate` for several targets (a study's sensitivity references)."""
    return [allocate(sensitivity, t, **options) for t in targets]


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
