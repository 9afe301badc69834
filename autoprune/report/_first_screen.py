"""The report's first screen: the strict front on validation framed where it matters (the
constraint and the front; outliers clipped and named), with the recommended picks marked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from autoprune._errors import ConfigError
from autoprune._stored import unpruned_metrics
from autoprune.report._data import REFERENCE_ROLES, _complete_trials, _hover
from autoprune.study import keys as study_keys
from autoprune.study._recommend import recommend, trial_row
from autoprune.study.keys import objective_names

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["FRONT_AXES"]


# The x axis of the framed front: speedup (the tool's word for speed), latency (when asked for)
# or, when latency is not an objective, compression (dense bytes over sparse bytes).
FRONT_AXES = ("speedup", "latency")
# Room around the framed region, as a share of its span on each axis.
FRAME_MARGIN = 0.08
# Room over the highest of the front and the drop limit, as a share of the drop span.
FRAME_OVER_LIMIT = 0.3
# Outliers named in the clip note (the rest are counted).
MAX_NAMED_OUTLIERS = 3


class _FramedPoints(NamedTuple):
    """Trials drawn on the framed front: x, y = validation drop, their intervals as (below,
    above), and hover texts."""

    numbers: list[int]
    x: list[float]
    y: list[float]
    x_err: list[tuple[float, float]]
    y_err: list[tuple[float, float]]
    hovers: list[str]


class _FrontInfo(NamedTuple):
    """The report's first screen: the strict front (the table ``autoprune search`` prints) and
    the picks of :func:`autoprune.study._recommend.recommend`, framed on what matters."""

    x_name: str  # "speedup", "latency" or "compression"
    x_title: str
    x_higher_is_better: bool
    front: _FramedPoints  # the strict front, in x order
    picks: _FramedPoints  # the recommended trials (their hovers say which pick and why)
    pick_labels: list[str]  # "fastest", "knee", "smallest" (one per pick, "knee, smallest" when shared)
    others: dict[str, _FramedPoints]  # "feasible", "infeasible", "reference": those inside the frame
    x_limit: float | None  # the constraint on the x axis (max_latency_ms, max_size_bytes), in its units
    y_limit: float | None  # max_accuracy_drop
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    outside: list[int]  # complete trials not drawn because they lie outside the frame
    clip_note: str | None  # how many trials lie outside the frame, naming the farthest
    note: str | None  # why there is no figure, when there is none


def _framed(
    points: list[tuple[FrozenTrial, float, float, tuple[float, float], tuple[float, float]]],
    names: Sequence[str],
    extra: dict[int, str] | None = None,
) -> _FramedPoints:
    extra = extra or {}
    return _FramedPoints(
        numbers=[t.number for t, *_ in points],
        x=[x for _, x, *_ in points],
        y=[y for _, _, y, *_ in points],
        x_err=[xe for *_, xe, _ in points],
        y_err=[ye for *_, ye in points],
        hovers=[(f"<b>{extra[t.number]}</b><br>" if t.number in extra else "") + _hover(t, names) for t, *_ in points],
    )


def _front_point(
    trial: FrozenTrial, base: dict[str, Any], x_name: str
) -> tuple[FrozenTrial, float, float, tuple[float, float], tuple[float, float]] | None:
    """(trial, x, validation drop, x interval, drop interval), or None when not measured."""

    row = trial_row(trial, base)
    se = float(trial.user_attrs.get("accuracy_drop_se", math.nan))
    y_err = (se, se) if math.isfinite(se) and se > 0 else (0.0, 0.0)
    x_err = (0.0, 0.0)
    if x_name == "speedup":
        x = row.speedup
        if (
            math.isfinite(row.speedup_low)
            and math.isfinite(row.speedup_high)
            and row.speedup_low <= x <= row.speedup_high
        ):
            x_err = (x - row.speedup_low, row.speedup_high - x)
    elif x_name == "latency":
        x = float(trial.user_attrs.get("latency_ms", math.nan))
        if all(math.isfinite(v) and v > 0 for v in (row.speedup, row.speedup_low, row.speedup_high)):
            x_err = (x * (1 - row.speedup / row.speedup_high), x * (row.speedup / row.speedup_low - 1))
    else:
        x = row.compression
    if not (math.isfinite(x) and math.isfinite(row.val_drop)):
        return None
    return trial, float(x), float(row.val_drop), x_err, y_err


def _span(values: Sequence[float], above: float = FRAME_MARGIN) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    width = (hi - lo) or max(abs(hi), 0.5)
    return lo - width * FRAME_MARGIN, hi + width * above


def _get_front_info(study: optuna.Study, axis: str = "speedup") -> _FrontInfo:
    """The strict front and the picks on validation drop against speedup (or latency, or
    compression when latency is not an objective), framed on the front and the constraints:
    the axes span every front point with its interval, the unpruned model (drop 0 at 1x) and
    each constraint line, plus a margin;
    the complete trials outside that frame (a uniform 90% reference at 20 points of drop) are
    left out and counted in ``clip_note``."""

    if axis not in FRONT_AXES:
        raise ConfigError(f"the front's axis must be one of {list(FRONT_AXES)}, but got {axis!r}")
    names = objective_names(study)
    base = unpruned_metrics(study)
    rec = recommend(study)
    x_name = axis if "latency" in names else "compression"
    x_title, higher = {
        "speedup": ("speedup over the unpruned model (x, higher is better)", True),
        "latency": ("latency (ms, lower is better)", False),
        "compression": ("compression: dense bytes / sparse bytes (x, higher is better)", True),
    }[x_name]
    empty = _FramedPoints([], [], [], [], [], [])
    constraints = rec.constraints
    y_limit = constraints.get("max_accuracy_drop")
    x_limit = None
    if x_name == "latency":
        x_limit = constraints.get("max_latency_ms")
    elif x_name == "speedup" and constraints.get("max_latency_ms") and base.get("latency_ms"):
        x_limit = float(base["latency_ms"]) / constraints["max_latency_ms"]
    elif x_name == "compression" and constraints.get("max_size_bytes") and base.get("dense_bytes"):
        x_limit = float(base["dense_bytes"]) / constraints["max_size_bytes"]

    def info(**kw: Any) -> _FrontInfo:
        base: dict[str, Any] = {
            "x_name": x_name,
            "x_title": x_title,
            "x_higher_is_better": higher,
            "front": empty,
            "picks": empty,
            "pick_labels": [],
            "others": {},
            "x_limit": x_limit,
            "y_limit": y_limit,
            "x_range": (0.0, 1.0),
            "y_range": (0.0, 1.0),
            "outside": [],
            "clip_note": None,
            "note": None,
        }
        return _FrontInfo(**{**base, **kw})

    if "accuracy" not in names or len(names) < 2:
        return info(note="the study does not trade accuracy against another objective")
    by_number = {t.number: t for t in _complete_trials(study)}
    front_points = [p for r in rec.rows if (p := _front_point(by_number[r.number], base, x_name)) is not None]
    if not front_points:
        return info(note="no feasible trial has finished its schedule yet")
    front_points.sort(key=lambda p: (p[1], p[2]))

    xs = [v for _, x, _, (lo, hi), _ in front_points for v in (x - lo, x + hi)]
    ys = [v for _, _, y, _, (lo, hi) in front_points for v in (y - lo, y + hi)]
    xs += [x_limit] if x_limit is not None else []
    # The unpruned model's place (1x, or its latency) anchors the frame: speed is read against it.
    unpruned = float(base.get("latency_ms", math.nan)) if x_name == "latency" else 1.0
    xs += [unpruned] if math.isfinite(unpruned) else []
    ys += [y_limit] if y_limit is not None else []
    # A band over the drop limit: what a little more drop would buy is worth seeing.
    x_range, y_range = _span(xs), _span([*ys, 0.0], above=FRAME_OVER_LIMIT)

    labels: dict[int, str] = {}
    for pick in rec.picks:
        labels[pick.number] = f"{labels[pick.number]}, {pick.label}" if pick.number in labels else pick.label
    whys = {pick.number: f"{pick.label}: {pick.why}" for pick in rec.picks}
    on_front = {t.number for t, *_ in front_points}
    pick_points = [next(q for q in front_points if q[0].number == n) for n in labels if n in on_front]

    groups: dict[str, list[Any]] = {"feasible": [], "infeasible": [], "reference": []}
    outside: list[tuple[float, Any]] = []
    for t in by_number.values():
        if t.number in on_front or "schedule" not in t.user_attrs:
            continue
        point = _front_point(t, base, x_name)
        if point is None:
            continue
        _, x, y, _, _ = point
        dx = max(x_range[0] - x, x - x_range[1], 0.0) / (x_range[1] - x_range[0])
        dy = max(y_range[0] - y, y - y_range[1], 0.0) / (y_range[1] - y_range[0])
        if dx > 0 or dy > 0:
            outside.append((max(dx, dy), point))
            continue
        key = (
            "reference"
            if study_keys.trial_role(t) in REFERENCE_ROLES
            else "feasible"
            if study_keys.is_feasible(t)
            else "infeasible"
        )
        groups[key].append(point)
    clip_note = None
    if outside:
        outside.sort(key=lambda o: (-o[0], o[1][0].number))

        named = []
        for _, (t, x, y, _, _) in outside[:MAX_NAMED_OUTLIERS]:
            kind = trial_row(t, base).kind
            x_text = f"{x:.3g} ms" if x_name == "latency" else f"{x:.2f}x"
            named.append(f"trial {t.number} ({kind}: val drop {y:.2f}, {x_text})")
        more = len(outside) - len(named)
        count = f"{len(outside)} trial{'s' if len(outside) != 1 else ''} outside this frame"
        clip_note = (
            f"{count}, not drawn: {'; '.join(named)}{f' and {more} more' if more else ''}. "
            "The Pareto plots below show every trial."
        )
    return info(
        front=_framed(front_points, names, whys),
        picks=_framed(pick_points, names, whys),
        pick_labels=[labels[t.number] for t, *_ in pick_points],
        others={k: _framed(v, names) for k, v in groups.items()},
        x_range=x_range,
        y_range=y_range,
        outside=sorted(o[1][0].number for o in outside),
        clip_note=clip_note,
    )
