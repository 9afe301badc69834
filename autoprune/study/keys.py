"""The contract between the search and what reads a study (reports, results, apply).

A study written by :func:`autoprune.search` carries these attributes. Readers use the
constants and helpers here instead of spelling keys themselves.

Study ``user_attrs``:
    ``config``: the resolved study config (dict; storage URL with password masked).
    ``objectives``: objective metric names in the order of ``trial.values``
        (also set with ``study.set_metric_names``); directions are ``study.directions``.
    ``unpruned``: the unpruned model's ``UNPRUNED_METRICS`` (trial 0 carries the same; its
        ``reference_latency_ms`` is the reference time of the process that ran trial 0).
    ``unpruned_trial``: number of the trial that measured it. (Studies made before these names
        store them as ``baseline`` and ``baseline_trial``; :func:`autoprune._stored.unpruned_metrics`
        reads either.)
    ``layers``: preflight of the task model, a list of ``LayerInfo.as_dict()``.
    ``task``: the task spec (``Task.spec``), enough to rebuild the task.
    ``scale_notice``: present when the task scores fractions: every accuracy in the study is
        that score x100 (percent), and readers rebuild the task the same way.
    ``space_notice``: present when a configured method was left out of the search because it
        cannot improve any objective (unstructured pruning on a dense latency target).
    ``config["front_tolerance"]``: points of accuracy within which the front does not tell
        trials apart (:func:`autoprune.study.pareto_front`); absent in older studies (strict front).
    ``references_refined``: the references added where each family turns infeasible
        (``[{"role", "uniform_amount", "sensitivity_target" or "global_amount"}]``; ``[]`` while
        none were added),
        set once every first reference finished.
    ``sensitivity``: the sensitivity scan (``Sensitivity.to_dict()``), when it ran; its
        structured curves hold ``speedups`` when latency is an objective.
    ``autoprune_version``.

Trial ``user_attrs``:
    ``schedule``: the Schedule as JSON; ``schedule_summary``: one line for humans.
    ``role``: ``ROLE_UNPRUNED``, ``ROLE_UNIFORM``, ``ROLE_SENSITIVITY``, ``ROLE_GLOBAL`` or
        ``ROLE_SEARCH``; ``uniform_amount`` (uniform references), ``sensitivity_target`` (the
        MACs share a sensitivity reference saves; ``warm_target`` in older studies) and ``global_amount`` (the ratio of Torch-Pruning's global
        pruning whose per-unit amounts a global reference runs); ``refined``: a reference
        added by the refinement.
    ``neighbour_of``: on a search trial of the local search (``neighbour_share``), the number
        of the trial whose schedule it moved (the fastest that met the constraints then).
    every key of ``Metrics.as_dict()``, plus the ``DERIVED_METRICS`` of
        :func:`autoprune.evaluation.derived_metrics`: ``accuracy_drop`` (unpruned minus
        accuracy, in the task's units: percentage points for the built-in tasks),
        ``speedup`` (unpruned latency / latency) and ``compression`` (unpruned dense bytes /
        sparse bytes); NaN where one cannot be computed.
    ``time_prune_s``, ``time_finetune_s``, ``time_eval_s``, ``time_latency_s``.
    ``accuracy_drop_se``: the standard error of ``accuracy_drop`` on the validation split
        (per-example scores paired with the unpruned model's; NaN where the task has no
        ``evaluate_samples``).
    ``feasible`` (bool): every constraint met as measured (what the sampler is told);
    ``within_noise`` (bool): not feasible, but only because ``accuracy_drop`` exceeds
        ``max_accuracy_drop`` by at most ``config["drop_noise_se"] * accuracy_drop_se``: the
        validation split cannot tell it from the limit, and the front (with a tolerance)
        shows it (:func:`is_within_noise`).
    ``error`` (str, on failed trials).
    ``fidelity``: ``FIDELITY_FULL``, or ``FIDELITY_SCREEN`` for a search trial that got only the
        cheap screening (state PRUNED; ``screen_accuracy``, ``screen_speedup``,
        ``screen_reason``); ``fine_tune_steps_spent``: optimiser steps the trial used.
        ``screen_speedup_low`` and ``screen_speedup_high``: the screen's 95% interval (absent
        in older studies); the full stage reuses the screen's timing (``latency_from_screen``)
        only when that interval lies within ``config["latency_rel_tol"]``, and times the
        trial again otherwise.
    ``screen_skipped``: why a search trial went straight to the full fine-tune (screening had
        stopped paying for itself: ``screening_pays``).
    ``speedup``, ``speedup_low``, ``speedup_high``, ``speedup_converged``: the paired ratio
        against the unpruned model and its 95% interval; ``measured_reference_ms`` and
        ``measured_latency_ms``: both sides' milliseconds from those rounds (a cached
        speedup's: from the sitting that timed it). ``latency_ms`` is
        ``reference_latency_ms / speedup``, where ``reference_latency_ms`` is the unpruned
        model's time per call as the worker process that ran the trial timed it, on its own
        host (its meter's first measurement: one number per sitting, so drift between the
        trials of a sitting cancels) and ``latency_host`` names that host. Trials run by
        other workers, hosts or resumes each carry their own; ``max_latency_ms`` and the
        front compare what each trial's host measured. Studies made before these existed
        lack ``latency_host`` and ``measured_reference_ms``, and their ``reference_latency_ms``
        is the rounds' reference time: there every ``latency_ms`` is the unpruned record's
        ``reference_latency_ms`` over the speedup (the fallback for readers).
    ``test_accuracy`` and ``test_accuracy_drop``: the task's held-out ``test`` score of a
        full-fidelity trial (tasks with a test split only); ``accuracy`` is validation.
    ``duplicate_of``: a search trial that would only repeat an earlier trial (the same
        Schedule, or a Schedule that prunes nothing: the unpruned reference) is not run: it
        ends PRUNED with ``fidelity = FIDELITY_REPEAT``, the earlier trial's number here,
        ``repeat_reason`` and ``fine_tune_steps_spent = 0``.
    ``early_rejected`` (bool): only in studies made before screening replaced early rejection.
Constraint values are set with Optuna's ``trial.set_constraint(name, value)`` (names
``accuracy_drop``, ``latency_ms``, ``size_bytes``) and read with ``FrozenTrial.constraints``
(a dict; the older list format in ``system_attrs["constraints"]`` reads the same way);
a trial is feasible when every value is <= 0.
"""

from __future__ import annotations

from typing import Any

from autoprune._errors import AutopruneError
from autoprune.config import OBJECTIVES
from autoprune.evaluation import METRIC_NAMES
from autoprune.schedule import Schedule

__all__ = [
    "UNPRUNED_METRICS",
    "DERIVED_METRICS",
    "TABLE_METRICS",
    "ROLE_UNPRUNED",
    "ROLE_UNIFORM",
    "ROLE_SEARCH",
    "ROLE_SENSITIVITY",
    "ROLE_GLOBAL",
    "FIDELITY_SCREEN",
    "FIDELITY_FULL",
    "FIDELITY_REPEAT",
    "OBJECTIVES",
    "DIRECTIONS",
    "constraint_values",
    "is_feasible",
    "is_within_noise",
    "reference_value",
    "front_tolerance",
    "objective_names",
    "schedule_summary",
    "trial_role",
    "trial_schedule",
]

ROLE_UNPRUNED = "reference-unpruned"
ROLE_UNIFORM = "reference-uniform"
ROLE_SEARCH = "search"
ROLE_SENSITIVITY = "reference-sensitivity"  # a sensitivity reference: the scan's allocation at a MACs target
ROLE_GLOBAL = "reference-global"  # Torch-Pruning's global magnitude allocation at one ratio
# How far a trial went: screened only (short fine-tune, ended PRUNED) or the full schedule.
FIDELITY_SCREEN = "screen"
FIDELITY_FULL = "full"
FIDELITY_REPEAT = "repeat"  # a search trial not run: it would repeat an earlier one (duplicate_of)

# Objective name -> (trial user_attr it reads, direction), defined with the config that validates it.
DIRECTIONS = {name: direction for name, (_, direction) in OBJECTIVES.items()}

# The one list of metric names: what the unpruned record keeps, what is derived from it, and the
# metrics (in this order) of every trials table, Pareto table and picked trial.
UNPRUNED_METRICS: tuple[str, ...] = (*METRIC_NAMES, "reference_latency_ms", "test_accuracy")
DERIVED_METRICS = ("accuracy_drop", "test_accuracy_drop", "speedup", "compression")
TABLE_METRICS = (
    "accuracy",
    "test_accuracy",
    *DERIVED_METRICS,
    "accuracy_drop_se",
    "latency_ms",
    "latency_spread",
    "sparse_bytes",
    "dense_bytes",
    "nonzero_params",
    "params",
    "macs",
)


def constraint_values(trial: Any) -> dict[str, float]:
    """The constraint values of a FrozenTrial by name (empty when it has none)."""
    return {str(k): float(v) for k, v in trial.constraints.items()}


def is_feasible(trial: Any) -> bool:
    """True when the trial satisfied every constraint (or the study has none)."""
    if "feasible" in trial.user_attrs:
        return bool(trial.user_attrs["feasible"])
    return all(v <= 0 for v in constraint_values(trial).values())


def is_within_noise(trial: Any) -> bool:
    """True when the trial broke only the accuracy limit, by less than the validation split
    can measure (``within_noise``, set by searches since it exists)."""
    return bool(trial.user_attrs.get("within_noise", False))


def trial_schedule(trial: Any) -> Schedule:
    """The Schedule a trial applied."""
    return Schedule.from_json(trial.user_attrs["schedule"])


def trial_role(trial: Any) -> str:
    """``ROLE_UNPRUNED``, ``ROLE_UNIFORM`` or ``ROLE_SEARCH`` (trials without a role searched)."""
    return str(trial.user_attrs.get("role", ROLE_SEARCH))


def schedule_summary(trial: Any) -> str:
    """The trial's one-line schedule summary (stored, or made from its schedule; "" if none)."""
    summary = trial.user_attrs.get("schedule_summary")
    if isinstance(summary, str):
        return summary
    if "schedule" not in trial.user_attrs:
        return ""
    try:
        return trial_schedule(trial).summary()
    except AutopruneError:
        return "invalid schedule"


def objective_names(study: Any) -> list[str]:
    """Objective names in the order of ``trial.values`` (``objective 0``... when unnamed)."""
    names = study.metric_names or study.user_attrs.get("objectives")
    if names and len(names) == len(study.directions):
        return [str(n) for n in names]
    return [f"objective {i}" for i in range(len(study.directions))]


def front_tolerance(study: Any) -> float:
    """Points of accuracy within which the study's front does not tell two trials apart
    (``front_tolerance`` of its config; 0, the strict front, for studies made before it)."""
    config = study.user_attrs.get("config")
    value = config.get("front_tolerance") if isinstance(config, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        return 0.0
    return float(value)


# A reference trial's family value (a uniform amount, a MACs target, a global ratio), by role;
# sensitivity references stored it as ``warm_target`` before they had their name.
REFERENCE_VALUE_KEYS = {
    ROLE_UNIFORM: ("uniform_amount",),
    ROLE_SENSITIVITY: ("sensitivity_target", "warm_target"),
    ROLE_GLOBAL: ("global_amount",),
}


def reference_value(trial: Any) -> float | None:
    """The value a reference trial's family varies (``uniform_amount``, ``sensitivity_target``
    or ``global_amount``), or None for other trials."""
    for key in REFERENCE_VALUE_KEYS.get(trial_role(trial), ()):
        value = trial.user_attrs.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None
