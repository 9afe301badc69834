"""The contract between the search and what reads a study (reports, results, apply).

A study written by :func:`autoprune.search` carries these attributes. Readers use the
constants and helpers here instead of spelling keys themselves.

Study ``user_attrs``:
    ``config``: the resolved study config (dict; storage URL with password masked).
    ``objectives``: objective metric names in the order of ``trial.values``
        (also set with ``study.set_metric_names``); directions are ``study.directions``.
    ``baseline``: metrics dict of the unpruned model (trial 0 carries the same).
    ``baseline_trial``: number of the trial that measured it.
    ``layers``: preflight of the task model, a list of ``LayerInfo.as_dict()``.
    ``task``: the task spec (``Task.spec``), enough to rebuild the task.
    ``autoprune_version``.

Trial ``user_attrs``:
    ``schedule``: the Schedule as JSON; ``schedule_summary``: one line for humans.
    ``role``: ``ROLE_UNPRUNED``, ``ROLE_UNIFORM`` or ``ROLE_SEARCH``.
    every key of ``Metrics.as_dict()``, plus ``accuracy_drop`` (baseline minus accuracy, in
        the task's units: percentage points for the built-in tasks), ``speedup`` (baseline
        latency / latency) and ``compression`` (baseline dense bytes / sparse bytes).
    ``time_prune_s``, ``time_finetune_s``, ``time_eval_s``, ``time_latency_s``.
    ``feasible`` (bool), ``early_rejected`` (bool), ``error`` (str, on failed trials).
Constraint values are set with Optuna's ``trial.set_constraint(name, value)`` (names
``accuracy_drop``, ``latency_ms``, ``size_bytes``) and read with ``FrozenTrial.constraints``
(a dict; the older list format in ``system_attrs["constraints"]`` reads the same way);
a trial is feasible when every value is <= 0.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ROLE_UNPRUNED",
    "ROLE_UNIFORM",
    "ROLE_SEARCH",
    "OBJECTIVES",
    "DIRECTIONS",
    "is_feasible",
    "trial_schedule",
    "constraint_values",
]

ROLE_UNPRUNED = "reference-unpruned"
ROLE_UNIFORM = "reference-uniform"
ROLE_SEARCH = "search"

# Objective name -> (trial user_attr it reads, direction).
OBJECTIVES: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy", "maximize"),
    "latency": ("latency_ms", "minimize"),
    "size": ("sparse_bytes", "minimize"),
    "params": ("nonzero_params", "minimize"),
    "macs": ("macs", "minimize"),
}
DIRECTIONS = {name: direction for name, (_, direction) in OBJECTIVES.items()}


def constraint_values(trial: Any) -> dict[str, float]:
    """The constraint values of a FrozenTrial by name (empty when it has none)."""
    return {str(k): float(v) for k, v in trial.constraints.items()}


def is_feasible(trial: Any) -> bool:
    """True when the trial satisfied every constraint (or the study has none)."""
    if "feasible" in trial.user_attrs:
        return bool(trial.user_attrs["feasible"])
    return all(v <= 0 for v in constraint_values(trial).values())


def trial_schedule(trial: Any) -> Any:
    """The Schedule a trial applied."""
    from autoprune.schedule import Schedule

    return Schedule.from_json(trial.user_attrs["schedule"])
