"""The data behind each figure of the report, computed from a study (no drawing here).

Each ``_get_..._info(study)`` returns a NamedTuple that :mod:`autoprune.report._plots`
draws. Tests check these, not the figures (as Optuna's visualization does).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from autoprune._errors import AutopruneError
from autoprune.schedule import Schedule
from autoprune.sensitivity import Sensitivity
from autoprune.study import keys as study_keys
from autoprune.study._front import pareto_front
from autoprune.study.keys import objective_names, schedule_summary

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["directions", "hypervolume"]

_logger = logging.getLogger(__name__)

# Parameter importances need enough complete trials to mean anything.
MIN_TRIALS_FOR_IMPORTANCE = 10
# Extra metrics shown in hovers when a trial carries them.
HOVER_METRICS = (*study_keys.DERIVED_METRICS, "accuracy_drop_se")
REFERENCE_ROLES = (study_keys.ROLE_UNPRUNED, study_keys.ROLE_UNIFORM, study_keys.ROLE_GLOBAL)


# ---------------------------------------------------------------------------- helpers
def directions(study: optuna.Study) -> list[str]:
    return ["maximize" if d.name == "MAXIMIZE" else "minimize" for d in study.directions]


def _complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in trials if t.values is not None]


def _schedule_or_none(trial: FrozenTrial) -> Schedule | None:
    if "schedule" not in trial.user_attrs:
        return None
    try:
        return study_keys.trial_schedule(trial)
    except AutopruneError:
        return None


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}"


def _hover(trial: FrozenTrial, names: Sequence[str]) -> str:
    lines = [f"<b>trial {trial.number}</b> ({study_keys.trial_role(trial)})"]
    lines += [f"{name}: {_fmt(v)}" for name, v in zip(names, trial.values, strict=True)]
    lines += [f"{key}: {_fmt(trial.user_attrs[key])}" for key in HOVER_METRICS if key in trial.user_attrs]
    if study_keys.is_within_noise(trial):
        lines.append("<i>over the accuracy limit by less than the validation split can tell (within noise)</i>")
    elif not study_keys.is_feasible(trial):
        lines.append("<i>infeasible</i>")
    summary = schedule_summary(trial)
    if summary:
        lines.append(summary)
    return "<br>".join(lines)


# ---------------------------------------------------------------------------- Pareto front
class _PointGroup(NamedTuple):
    """Trials drawn alike: their numbers, objective values (one row each) and hover texts;
    ``errors``: per trial and objective, how far the value may lie below and above it
    (``_errors``; 0 where nothing is known)."""

    numbers: list[int]
    values: list[list[float]]
    hovers: list[str]
    errors: list[list[tuple[float, float]]] = []


def _errors(trial: FrozenTrial, names: Sequence[str]) -> list[tuple[float, float]]:
    """(below, above) of each objective value: accuracy +- the standard error of its drop
    (``accuracy_drop_se``); latency over the speedup's 95% interval (``latency_ms`` is the
    unpruned latency over the speedup, so its ends are at ``speedup / speedup_high`` and
    ``speedup / speedup_low`` of it); 0 for the rest and where nothing was recorded."""
    a = trial.user_attrs
    out = []
    for name, value in zip(names, trial.values, strict=True):
        below = above = 0.0
        if name == "accuracy":
            se = float(a.get("accuracy_drop_se", math.nan))
            below = above = se if math.isfinite(se) else 0.0
        elif name == "latency":
            speedup, low, high = (float(a.get(k, math.nan)) for k in ("speedup", "speedup_low", "speedup_high"))
            if all(math.isfinite(v) and v > 0 for v in (speedup, low, high)) and low <= speedup <= high:
                below, above = value * (1 - speedup / high), value * (speedup / low - 1)
        out.append((below, above))
    return out


class _ParetoInfo(NamedTuple):
    objective_names: list[str]
    directions: list[str]
    # "pareto": the study's front (pareto_front); "feasible"/"infeasible": the other complete trials;
    # "reference": unpruned, uniform and global trials (drawn on top, also when on the front).
    groups: dict[str, _PointGroup]
    # The pairs of objective indices drawn in 2D (one pair for two objectives, three for three).
    pairs: list[tuple[int, int]]


def _group(trials: Sequence[FrozenTrial], names: Sequence[str]) -> _PointGroup:
    return _PointGroup(
        numbers=[t.number for t in trials],
        values=[list(map(float, t.values)) for t in trials],
        hovers=[_hover(t, names) for t in trials],
        errors=[_errors(t, names) for t in trials],
    )


def _get_pareto_info(study: optuna.Study) -> _ParetoInfo:
    names = objective_names(study)
    complete = _complete_trials(study)
    best = pareto_front(study)
    best_numbers = {t.number for t in best}
    references = [t for t in complete if study_keys.trial_role(t) in REFERENCE_ROLES]
    ref_numbers = {t.number for t in references}
    others = [t for t in complete if t.number not in best_numbers and t.number not in ref_numbers]
    groups = {
        "pareto": _group(best, names),
        "feasible": _group([t for t in others if study_keys.is_feasible(t)], names),
        "infeasible": _group([t for t in others if not study_keys.is_feasible(t)], names),
        "reference": _group(references, names),
    }
    n = len(names)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)] if n <= 3 else [(0, j) for j in range(1, n)]
    return _ParetoInfo(objective_names=names, directions=directions(study), groups=groups, pairs=pairs)


# ---------------------------------------------------------------------------- hypervolume
class _HypervolumeInfo(NamedTuple):
    trial_numbers: list[int]
    values: list[float]
    reference_point: list[float]  # in the objectives' own units and directions
    note: str | None  # why the history is missing, when it is


def hypervolume(points: Sequence[Sequence[float]] | np.ndarray, reference_point: Sequence[float]) -> float:
    """The hypervolume that ``points`` dominate up to ``reference_point`` (all objectives
    minimised), computed by Optuna's public :func:`optuna.visualization.plot_hypervolume_history`
    on an in-memory study of the points (Optuna keeps its hypervolume function private)."""
    import optuna

    pts = np.asarray(points, dtype=float).reshape(-1, len(reference_point))
    if len(pts) == 0:
        return 0.0
    study = optuna.create_study(directions=["minimize"] * len(reference_point))
    distributions: dict[str, optuna.distributions.BaseDistribution] = {}
    study.add_trials([optuna.trial.create_trial(values=list(p), params={}, distributions=distributions) for p in pts])
    return _hypervolume_history(study, list(map(float, reference_point)))[1][-1]


def _hypervolume_history(study: optuna.Study, reference_point: list[float]) -> tuple[list[int], list[float]]:
    """Optuna's hypervolume after each complete trial (its public plot's data)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figure = optuna.visualization.plot_hypervolume_history(study, reference_point)
    trace = figure.data[0]
    return [int(x) for x in trace.x], [float(y) for y in trace.y]


def _get_hypervolume_info(study: optuna.Study) -> _HypervolumeInfo:
    """Hypervolume of the feasible complete trials so far, after each complete trial.

    The reference point is the worst feasible value of each objective plus 10% of its
    range, so every feasible trial adds to the volume. Optuna computes the volumes.
    """
    if len(study.directions) < 2:
        return _HypervolumeInfo([], [], [], "hypervolume needs at least two objectives")
    complete = sorted(_complete_trials(study), key=lambda t: t.number)
    feasible = [t for t in complete if study_keys.is_feasible(t)]
    if not feasible:
        return _HypervolumeInfo([], [], [], "no feasible complete trial yet")
    # In minimisation form: flip maximised objectives.
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions(study)])
    points = np.array([t.values for t in feasible], dtype=float) * signs
    finite = np.isfinite(points).all(axis=1)
    if not finite.any():
        return _HypervolumeInfo([], [], [], "no feasible trial has finite objective values")
    worst, best = points[finite].max(axis=0), points[finite].min(axis=0)
    span = np.where(worst > best, worst - best, np.maximum(np.abs(worst), 1.0))
    reference = ((worst + 0.1 * span) * signs).tolist()  # in the objectives' own directions
    numbers, values = _hypervolume_history(study, reference)
    return _HypervolumeInfo(numbers, values, reference, None)


# ---------------------------------------------------------------------------- heatmap
class _HeatmapInfo(NamedTuple):
    layers: list[str]  # rows
    trial_numbers: list[int]  # columns: the Pareto trials
    amounts: list[list[float | None]]  # layers x trials; None where the layer is not pruned
    methods: list[list[str]]  # layers x trials: "structured", "unstructured" or ""
    note: str | None


def _layer_order(study: optuna.Study, schedules: Sequence[Schedule]) -> list[str]:
    # The preflight's layers in the model's order (an empty row says "never pruned"), then
    # any layer a schedule names that the preflight did not list.
    known = [str(info["name"]) for info in study.user_attrs.get("layers", []) if isinstance(info, dict)]
    extra = sorted({name for s in schedules for name in s.layers} - set(known))
    return known + extra


def _get_heatmap_info(study: optuna.Study) -> _HeatmapInfo:
    """Per-layer amounts of the Pareto trials (ordered by the first objective)."""
    best = pareto_front(study)
    first_sign = -1.0 if directions(study)[0] == "maximize" else 1.0
    best = sorted(best, key=lambda t: (first_sign * t.values[0], t.number))
    pairs = [(t, s) for t in best if (s := _schedule_or_none(t)) is not None]
    if not pairs:
        note = "no Pareto trial yet" if not best else "the Pareto trials carry no schedule"
        return _HeatmapInfo([], [], [], [], note)
    schedules = [s for _, s in pairs]
    layers = _layer_order(study, schedules)
    amounts: list[list[float | None]] = []
    methods: list[list[str]] = []
    for name in layers:
        row_amounts: list[float | None] = []
        row_methods: list[str] = []
        for s in schedules:
            plan = s.active_layers().get(name)
            row_amounts.append(None if plan is None else float(plan.amount))
            row_methods.append("" if plan is None else plan.method)
        amounts.append(row_amounts)
        methods.append(row_methods)
    return _HeatmapInfo(layers, [t.number for t, _ in pairs], amounts, methods, None)


# ---------------------------------------------------------------------------- importances
class _ImportanceInfo(NamedTuple):
    objective_names: list[str]
    importances: list[dict[str, float]]  # one per objective, largest first
    n_trials: int
    note: str | None


def _get_importance_info(study: optuna.Study, *, min_trials: int = MIN_TRIALS_FOR_IMPORTANCE) -> _ImportanceInfo:
    """Parameter importances for each objective (Optuna's PED-ANOVA: fast, deterministic)."""
    import optuna

    names = objective_names(study)
    complete = _complete_trials(study)
    params = {p for t in complete for p in t.params}
    if len(complete) < min_trials:
        note = f"parameter importances need at least {min_trials} complete trials, the study has {len(complete)}"
        return _ImportanceInfo(names, [], len(complete), note)
    if len(params) < 2:
        note = f"parameter importances need at least 2 parameters, the trials have {len(params)}"
        return _ImportanceInfo(names, [], len(complete), note)
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    results = []
    for i, direction in enumerate(directions(study)):
        sign = -1.0 if direction == "maximize" else 1.0  # PED-ANOVA ranks low targets best

        def target(t: FrozenTrial, i: int = i, sign: float = sign) -> float:
            return sign * t.values[i]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
        results.append({k: float(v) for k, v in importances.items()})
    return _ImportanceInfo(names, results, len(complete), None)


class _SensitivityInfo(NamedTuple):
    """Validation accuracy of every unit pruned alone (BatchNorm re-estimated, no fine-tune)."""

    units: list[str]
    amounts: list[list[float]]
    scores: list[list[float]]
    reference_score: float
    note: str | None
    speedups: list[list[float]] | None = None  # per unit, from 1.0 unpruned: when the scan was timed


def _get_sensitivity_info(study: optuna.Study) -> _SensitivityInfo:
    data = study.user_attrs.get("sensitivity")
    if not isinstance(data, dict):
        return _SensitivityInfo([], [], [], math.nan, "the study ran no sensitivity scan")
    sens = Sensitivity.from_dict(data)
    curves = [c for c in sens.curves if c.method == "structured"]
    if not curves:
        return _SensitivityInfo([], [], [], sens.reference_score, "no unit can be pruned structurally")
    return _SensitivityInfo(
        units=[c.unit for c in curves],
        amounts=[[0.0, *c.amounts] for c in curves],
        scores=[[sens.reference_score, *c.scores] for c in curves],
        reference_score=sens.reference_score,
        note=None,
        speedups=[[1.0, *(c.speedups or ())] for c in curves] if sens.path_resource == "latency" else None,
    )
