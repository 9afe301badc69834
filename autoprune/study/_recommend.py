"""What to take from a study: its strict Pareto front as a table that fits in 100 columns, and
at most three picks, each with the ``autoprune apply`` command and the Python call that apply it.

Computed first (:func:`recommend` -> :class:`Recommendation`, plain data that tests check),
then written as lines (:func:`front_lines`, :func:`pick_lines`, :func:`trial_lines`), the way
Optuna separates a plot's data from its drawing.

The picks, all among feasible trials that ran their whole schedule (validation decides, as the
search did; the test drop is shown beside it and never used):

- ``fastest``: the fastest trial that meets the study's constraints on validation;
- ``knee``: the knee of the front of validation drop against speedup: the point farthest
  above the straight line between the front's two ends (past it, speed costs more drop);
- ``smallest``: the smallest trial that meets the constraints, when size (or non-zero
  parameters) is an objective.

Drops are read through the table metrics of :mod:`autoprune.study.keys` (``accuracy_drop``,
``test_accuracy_drop``: the unpruned score minus the trial's, in the task's units, so larger is
always worse whatever the task's metric), never recomputed here.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, NamedTuple

from autoprune._stored import unpruned_metrics
from autoprune.config import DEFAULT_STORAGE, mask_url
from autoprune.study import keys as study_keys
from autoprune.study._front import pareto_front
from autoprune.study._table import trial_metrics

if TYPE_CHECKING:
    import optuna

__all__ = [
    "Pick",
    "Recommendation",
    "TrialRow",
    "front_lines",
    "pick_lines",
    "recommend",
    "trial_lines",
    "trial_row",
]

WIDTH = 100  # every line of the tables fits a 100-column terminal
_VAL_DROP = "accuracy_drop"  # keys.TABLE_METRICS: validation drop, what the search selected on
_TEST_DROP = "test_accuracy_drop"  # keys.TABLE_METRICS: held-out drop, never seen by the search
# objective -> (the trial metric the "smallest" pick minimises, its pick(minimize=...) name)
_SIZE_OBJECTIVES = {"size": ("sparse_bytes", "size"), "params": ("nonzero_params", "params")}
_SHORT_ROLES = {
    study_keys.ROLE_UNPRUNED: "unpruned",
    study_keys.ROLE_UNIFORM: "uniform",
    study_keys.ROLE_SENSITIVITY: "sensitivity",
    study_keys.ROLE_GLOBAL: "global",
}


class TrialRow(NamedTuple):
    """One trial as the narrow tables show it (NaN where not measured)."""

    number: int
    kind: str  # "unpruned", "uniform 50%", "sensitivity 75%", "global 25%", "search", "local"
    state: str  # "ok", "infeasible", "screened", "repeat", "failed", "running", "waiting", ...
    val_drop: float
    test_drop: float
    speedup: float
    speedup_low: float
    speedup_high: float
    size_bytes: float  # sparse bytes
    compression: float
    nonzero_params: float
    note: str  # why a trial is not complete and feasible (its error, why it was screened out)


class Pick(NamedTuple):
    """A recommended trial: which rule chose it and why, in one line."""

    label: str  # "fastest", "knee" or "smallest"
    number: int
    why: str
    minimize: str  # the pick(minimize=...) that chooses it by rule


class Recommendation(NamedTuple):
    """The strict front and the picks of one study."""

    study_name: str
    rows: list[TrialRow]  # the strict Pareto front, from the least validation drop to the most
    picks: list[Pick]
    constraints: dict[str, float]  # the study's constraints (max_accuracy_drop, ...)
    full_trials: int  # complete, fully run trials that validation chose among
    objectives: list[str]

    def row(self, number: int) -> TrialRow:
        return next(r for r in self.rows if r.number == number)

    def selection_effect(self) -> list[Pick]:
        """Picks whose held-out drop is larger than the validation drop that chose them."""
        return [p for p in self.picks if self.row(p.number).test_drop > self.row(p.number).val_drop + 1e-9]


# ---------------------------------------------------------------------------- data
def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _kind(trial: optuna.trial.FrozenTrial) -> str:
    role = study_keys.trial_role(trial)
    if role == study_keys.ROLE_SEARCH:
        return "local" if "neighbour_of" in trial.user_attrs else "search"
    kind = _SHORT_ROLES.get(role, role)
    value = study_keys.reference_value(trial)
    amount = math.nan if value is None else value
    return f"{kind} {amount:.0%}" if math.isfinite(amount) else kind


def _state(trial: optuna.trial.FrozenTrial) -> tuple[str, str]:
    attrs = trial.user_attrs
    name = trial.state.name
    if name == "COMPLETE":
        if attrs.get("early_rejected"):
            return "rejected", ""
        return ("ok" if study_keys.is_feasible(trial) else "infeasible"), ""
    if name == "PRUNED":
        if attrs.get("fidelity") == study_keys.FIDELITY_REPEAT:
            return "repeat", f"repeats trial {attrs.get('duplicate_of', '?')}"
        if attrs.get("fidelity") == study_keys.FIDELITY_SCREEN:
            return "screened", str(attrs.get("screen_reason", ""))
        return "pruned", ""
    if name == "FAIL":
        return "failed", str(attrs.get("error", ""))
    return name.lower(), ""


def trial_row(trial: optuna.trial.FrozenTrial, unpruned: dict[str, Any]) -> TrialRow:
    """The trial as the narrow tables show it."""
    metrics = trial_metrics(trial, unpruned)
    attrs = trial.user_attrs
    speedup = _number(metrics.get("speedup"))
    state, note = _state(trial)
    return TrialRow(
        number=trial.number,
        kind=_kind(trial),
        state=state,
        val_drop=_number(metrics.get(_VAL_DROP)),
        test_drop=_number(metrics.get(_TEST_DROP)),
        speedup=speedup,
        speedup_low=_number(attrs.get("speedup_low", math.nan)),
        speedup_high=_number(attrs.get("speedup_high", math.nan)),
        size_bytes=_number(metrics.get("sparse_bytes")),
        compression=_number(metrics.get("compression")),
        nonzero_params=_number(metrics.get("nonzero_params")),
        note=" ".join(note.split()),
    )


def _study_constraints(study: optuna.Study) -> dict[str, float]:
    config = study.user_attrs.get("config")
    constraints = config.get("constraints") if isinstance(config, dict) else None
    if not isinstance(constraints, dict):
        return {}
    return {str(k): float(v) for k, v in constraints.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _front_2d(rows: list[TrialRow], gain: str) -> list[tuple[float, float, TrialRow]]:
    """(drop, gain, row) of the rows no other row beats on both validation drop (less) and
    ``gain`` (more), by drop."""
    points = [(r.val_drop, float(getattr(r, gain)), r) for r in rows]
    usable = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])]
    kept = [
        a
        for a in usable
        if not any(b[0] <= a[0] and b[1] >= a[1] and (b[0], b[1]) != (a[0], a[1]) for b in usable)
    ]
    return sorted(kept, key=lambda p: (p[0], p[1], p[2].number))


def knee(rows: list[TrialRow], gain: str = "speedup") -> TrialRow | None:
    """The knee of the front of validation drop against ``gain`` (``speedup`` or
    ``compression``): with both axes scaled to [0, 1] over the front, the point farthest above
    the chord between its two ends. None with fewer than three points, or when no point lies
    above the chord (a straight or sagging front)."""
    front = _front_2d(rows, gain)
    if len(front) < 3:
        return None
    (x0, y0, _), (x1, y1, _) = front[0], front[-1]
    if x1 <= x0 or y1 <= y0:
        return None
    best, best_gap = None, 1e-9
    for drop, value, r in front[1:-1]:
        x, y = (drop - x0) / (x1 - x0), (value - y0) / (y1 - y0)
        gap = (y - x) / math.sqrt(2.0)  # signed distance above the chord y = x
        if gap > best_gap:
            best, best_gap = r, gap
    return best


def _limit_text(constraints: dict[str, float]) -> str:
    parts = []
    if "max_accuracy_drop" in constraints:
        parts.append(f"drop <= {constraints['max_accuracy_drop']:g}")
    if "max_latency_ms" in constraints:
        parts.append(f"latency <= {constraints['max_latency_ms']:g} ms")
    if "max_size_bytes" in constraints:
        parts.append(f"size <= {_size(constraints['max_size_bytes'])}")
    return " and ".join(parts) or "the constraints"


def recommend(study: optuna.Study) -> Recommendation:
    """The strict front of ``study`` and at most three picks (see the module's docstring)."""
    from optuna.trial import TrialState

    unpruned = unpruned_metrics(study)
    objectives = study_keys.objective_names(study)
    constraints = _study_constraints(study)
    front = pareto_front(study, 0.0)
    rows = sorted((trial_row(t, unpruned) for t in front), key=lambda r: (r.val_drop, -r.speedup, r.number))
    full = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "schedule" in t.user_attrs and not t.user_attrs.get("early_rejected")
    ]
    limit = _limit_text(constraints)
    picks: list[Pick] = []

    # Speed where latency is an objective (the front is then its trade-off), else size.
    gain = "speedup" if "latency" in objectives else "compression"
    timed = [r for r in rows if math.isfinite(r.speedup)] if gain == "speedup" else []
    fastest = max(timed, key=lambda r: (r.speedup, -r.val_drop, -r.number), default=None)
    if fastest is not None:
        picks.append(Pick("fastest", fastest.number, f"the fastest with {limit} on validation", "latency"))
    bend = knee(rows, gain)
    if bend is not None and bend.number not in {p.number for p in picks}:
        why = "the knee of the front"
        if fastest is not None:
            more = fastest.speedup / bend.speedup - 1.0
            why = f"the knee; the fastest is {more:.0%} faster for {fastest.val_drop - bend.val_drop:.2f} more val drop"
        picks.append(Pick("knee", bend.number, why, "latency" if gain == "speedup" else "size"))
    for objective, (metric, minimize) in _SIZE_OBJECTIVES.items():
        if objective not in objectives:
            continue
        field = "size_bytes" if metric == "sparse_bytes" else "nonzero_params"
        sized = [r for r in rows if math.isfinite(getattr(r, field))]
        smallest = min(sized, key=lambda r: (getattr(r, field), r.val_drop, r.number), default=None)
        if smallest is None:
            continue
        what = "the smallest" if objective == "size" else "the fewest non-zero parameters"
        for i, p in enumerate(picks):
            if p.number == smallest.number:
                picks[i] = p._replace(why=f"{p.why}; also {what}")
                break
        else:
            picks.append(Pick("smallest", smallest.number, f"{what} with {limit} on validation", minimize))
        break  # one "smallest" pick: size, else params
    return Recommendation(
        study_name=study.study_name,
        rows=rows,
        picks=picks[:3],
        constraints=constraints,
        full_trials=len(full),
        objectives=objectives,
    )


# ---------------------------------------------------------------------------- lines
def _drop(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "-"


def _size(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def _speedup(row: TrialRow) -> str:
    if not math.isfinite(row.speedup):
        return "-"
    if math.isfinite(row.speedup_low) and math.isfinite(row.speedup_high):
        return f"{row.speedup:.2f}x ({row.speedup_low:.2f}-{row.speedup_high:.2f})"
    return f"{row.speedup:.2f}x"


def _size_cell(row: TrialRow) -> str:
    if not math.isfinite(row.size_bytes):
        return "-"
    ratio = f" ({row.compression:.1f}x)" if math.isfinite(row.compression) else ""
    return _size(row.size_bytes) + ratio


def _table(rows: list[TrialRow], *, with_state: bool, last: dict[int, str], last_name: str) -> list[str]:
    header = ["trial", "kind", *(["state"] if with_state else []), "val drop", "test drop",
              "speedup (95% CI)", "size (ratio)", last_name]
    cells = [
        [str(r.number), r.kind, *([r.state] if with_state else []), _drop(r.val_drop), _drop(r.test_drop),
         _speedup(r), _size_cell(r), last.get(r.number, "")]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    left = {1, 2} if with_state else {1}  # text columns; numbers align right
    first_number = max(left) + 1

    def join(sep: str) -> list[str]:
        lines = []
        for row in [header, *cells]:
            parts = [cell.ljust(w) if i in left or i == len(row) - 1 else cell.rjust(w) for i, (cell, w) in
                     enumerate(zip(row, widths, strict=True))]
            if row is not header and row[-1] and all(c == "-" for c in row[first_number:-1]):
                parts = [*parts[:first_number], row[-1]]  # nothing measured: the note gets the room
            lines.append(sep.join(parts).rstrip())
        return lines

    lines = join("  ")
    if any(len(line) > WIDTH for line in lines):
        lines = join(" ")  # narrower columns before anything is cut
    return [line if len(line) <= WIDTH else line[: WIDTH - 3] + "..." for line in lines]


def front_lines(rec: Recommendation) -> list[str]:
    """The strict front as a table (one header line, one line per trial), picks marked."""
    marks: dict[int, str] = {}
    for p in rec.picks:
        marks[p.number] = f"{marks[p.number]}, {p.label}" if p.number in marks else p.label
    return _table(rec.rows, with_state=False, last=marks, last_name="pick")


def trial_lines(rows: list[TrialRow]) -> list[str]:
    """Any trials (``autoprune trials``) in the front's columns, with their state and a note."""
    return _table(rows, with_state=True, last={r.number: r.note for r in rows}, last_name="note")


def _storage_arg(storage: str) -> tuple[str, str]:
    """The CLI flag and the Python argument that name ``storage`` (none for the default)."""
    if storage == DEFAULT_STORAGE:
        return "", ""
    shown = mask_url(storage)
    return f" --storage {shown}", f", {json.dumps(shown)}"


def pick_lines(rec: Recommendation, storage: str = DEFAULT_STORAGE) -> list[str]:
    """The recommendation block: per pick, why and its test drop, then the command and the
    Python call that apply it; then one line on the selection effect where it shows."""
    if not rec.picks:
        return [f"No trial meets {_limit_text(rec.constraints)} yet: nothing to recommend."]
    flag, arg = _storage_arg(storage)
    label_width = max(len(p.label) for p in rec.picks)
    pad = " " * (label_width + 4)
    lines = ["Recommended (chosen on validation, as the search was; test: held out, never seen by it):"]
    for p in rec.picks:
        r = rec.row(p.number)
        lines.append(f"  {p.label.ljust(label_width)}  trial {p.number} (test drop {_drop(r.test_drop)}): {p.why}")
        lines.append(f"{pad}autoprune apply --study {rec.study_name}{flag} --trial {p.number} --out pruned-{p.number}")
        lines.append(f"{pad}model = ap.load_study({json.dumps(rec.study_name)}{arg}).pick(trial={p.number}).apply()")
    flattered = rec.selection_effect()
    if flattered:
        numbers = sorted({p.number for p in flattered})
        which = ("trial " if len(numbers) == 1 else "trials ") + ", ".join(map(str, numbers))
        lines.append(
            f"Selection effect: validation picked {which} from {rec.full_trials}, which flatters "
            f"{'it' if len(flattered) == 1 else 'them'}: expect the test drop."
        )
    return lines


def _speedup_short(row: TrialRow) -> str:
    parts = []
    if math.isfinite(row.speedup):
        parts.append(f"{row.speedup:.2f}x faster")
    if math.isfinite(row.compression):
        parts.append(f"{row.compression:.1f}x smaller")
    return ", ".join(parts) or "not timed"
