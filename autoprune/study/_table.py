"""The one trials table of a study (``autoprune trials``, ``trials.csv``, the Pareto table)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from autoprune._stored import unpruned_metrics
from autoprune.evaluation import derived_metrics
from autoprune.study import keys as study_keys

if TYPE_CHECKING:
    import optuna
    import pandas as pd

__all__ = ["trial_metrics", "trials_table"]


def trial_metrics(trial: optuna.trial.FrozenTrial, unpruned: dict[str, Any]) -> dict[str, Any]:
    """The trial's ``TABLE_METRICS``; derived ones an older study lacks are computed here."""
    attrs = trial.user_attrs
    out = {key: attrs.get(key) for key in study_keys.TABLE_METRICS}
    derived = derived_metrics(attrs, unpruned)
    for key in study_keys.DERIVED_METRICS:
        if out[key] is None:
            out[key] = derived[key]
    return out


def trials_table(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None) -> pd.DataFrame:
    """The one trials table: a row per trial (every trial by default), by trial number.

    Columns: ``number``, ``state``, ``role``, one per objective (named like it, the value
    Optuna optimised), the ``TABLE_METRICS`` of :mod:`autoprune.study.keys` that no
    objective column already shows, ``feasible`` (None until complete), ``within_noise``
    (over the accuracy limit by less than the validation split can tell; None until complete),
    ``fidelity`` (``full``, or ``screen`` for a trial that only got the cheap screening),
    ``speedup_converged`` (False when the paired speedup's interval stayed wider than asked),
    ``schedule`` (the one-line summary) and ``error``.
    """
    import pandas as pd

    names = study_keys.objective_names(study)
    unpruned = unpruned_metrics(study)
    metrics = [k for k in study_keys.TABLE_METRICS if k not in names]
    rows = []
    chosen = study.get_trials(deepcopy=False) if trials is None else trials
    for t in sorted(chosen, key=lambda t: t.number):
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "role": study_keys.trial_role(t)}
        values = t.values if t.values is not None else [math.nan] * len(names)
        row.update(zip(names, values, strict=False))
        measured = trial_metrics(t, unpruned)
        row.update({k: measured[k] for k in metrics})
        row["feasible"] = study_keys.is_feasible(t) if t.state.name == "COMPLETE" else None
        row["within_noise"] = study_keys.is_within_noise(t) if t.state.name == "COMPLETE" else None
        row["fidelity"] = t.user_attrs.get("fidelity", "early-rejected" if t.user_attrs.get("early_rejected") else None)
        converged = t.user_attrs.get("speedup_converged")
        row["speedup_converged"] = bool(converged) if converged is not None else None
        row["schedule"] = study_keys.schedule_summary(t)
        row["error"] = t.user_attrs.get("error")
        rows.append(row)
    columns = ["number", "state", "role", *names, *metrics, "feasible", "within_noise", "fidelity", "speedup_converged", "schedule", "error"]
    return pd.DataFrame(rows, columns=columns)
