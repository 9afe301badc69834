"""Reading a finished (or running) study: the Pareto table and picking a trial (applying it: ``_picked``).

A study written by :func:`autoprune.search` follows the contract in
:mod:`autoprune.study.keys`; everything here reads it through that module.

Example:
    >>> import autoprune as ap
    >>> results = ap.load_study("digits", "sqlite:///studies/autoprune.db")  # doctest: +SKIP
    >>> results.pareto()  # doctest: +SKIP
    >>> picked = results.pick(max_accuracy_drop=1.0, minimize="latency")  # doctest: +SKIP
    >>> model = picked.apply()  # the study's task model, pruned and fine-tuned like the trial  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune import config as _config
from autoprune._errors import ConfigError, NoQualifyingTrialError, StudyNotFoundError, TaskError
from autoprune._paths import sqlite_path
from autoprune._stored import unpruned_metrics
from autoprune.lm._summary import is_lm_study, is_structure_study
from autoprune.study import keys as study_keys
from autoprune.study._front import pareto_front
from autoprune.study._picked import PickedTrial, format_value
from autoprune.study._table import trial_metrics, trials_table
from autoprune.tasks import Task, from_spec, in_percent

if TYPE_CHECKING:
    import optuna
    import pandas as pd

__all__ = [
    "MINIMIZE_KEYS",
    "NoQualifyingTrialError",
    "StudyNotFoundError",
    "StudyResults",
    "load_study",
    "rebuild_task",
]

_logger = logging.getLogger(__name__)

DEFAULT_STORAGE = _config.DEFAULT_STORAGE  # the one default (autoprune.config); not re-exported

# pick(minimize=...) name -> the trial user_attr it reads (smaller is better for all).
MINIMIZE_KEYS: dict[str, str] = {
    "latency": study_keys.OBJECTIVES["latency"][0],
    "size": study_keys.OBJECTIVES["size"][0],
    "params": study_keys.OBJECTIVES["params"][0],
    "macs": study_keys.OBJECTIVES["macs"][0],
    "accuracy_drop": "accuracy_drop",
}
_UNITS = {"accuracy_drop": " points", "latency_ms": " ms", "sparse_bytes": " bytes"}


# ---------------------------------------------------------------------------- loading
def rebuild_task(study: optuna.Study) -> Task:
    """A study's task, rebuilt from the spec it stored (the one place a reader does this): in
    percent when the search reported a fraction-valued task x100 (``scale_notice``)."""
    spec = study.user_attrs.get("task")
    if not isinstance(spec, dict):
        raise TaskError(f"study {study.study_name!r} records no task spec; pass `task=` or a model")
    task = from_spec(spec)
    if study.user_attrs.get("scale_notice"):
        # the search reported this fraction-valued task in percent; so do its readers
        task, _ = in_percent(replace(task, scale="fraction"), 0.0)
    return task


def _normalise_storage(storage: str | Path) -> str:
    """A storage URL; a bare file path means a SQLite file."""
    return _config.driver_url(str(storage))


def load_study(study_name: str, storage: str | Path = DEFAULT_STORAGE) -> StudyResults:
    """Open a study for reading its results.

    Args:
        study_name: the study's name.
        storage: an Optuna storage URL (``sqlite:///path.db``, ``postgresql://...``) or the
            path of a SQLite file.

    Raises:
        StudyNotFoundError: the storage or the study does not exist (the message lists the
            studies that do).

    Example:
        >>> results = load_study("digits", "sqlite:///studies/autoprune.db")  # doctest: +SKIP
        >>> results.pick(max_accuracy_drop=0.5).number  # doctest: +SKIP
        12
    """
    import optuna

    url = _normalise_storage(storage)
    path = sqlite_path(url)
    # Optuna would create an empty database for a mistyped path; say it is missing instead.
    if path is not None and not path.is_file():
        raise StudyNotFoundError(f"no study database at {str(path)!r} (storage {url!r}); run `autoprune search` first")
    shown = _config.mask_url(url)
    # A running search may hold the SQLite lock for a moment; wait instead of failing.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        names = optuna.get_all_study_names(storage=rdb)
    except Exception as exc:  # noqa: BLE001 - bad URL, server down, missing driver
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StudyNotFoundError(f"cannot open storage {shown!r}: {type(exc).__name__}: {first}") from exc
    if study_name not in names:
        present = ", ".join(repr(n) for n in sorted(names)) or "none"
        raise StudyNotFoundError(f"no study {study_name!r} in {shown!r}; studies there: {present}")
    return StudyResults(optuna.load_study(study_name=study_name, storage=rdb))


# ---------------------------------------------------------------------------- helpers
def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _finite_or_inf(value: Any) -> float:
    number = _number(value)
    return math.inf if math.isnan(number) else number


def _is_usable(trial: optuna.trial.FrozenTrial) -> bool:
    """A complete trial that ran its whole schedule and recorded it."""
    from optuna.trial import TrialState

    return (
        trial.state == TrialState.COMPLETE
        and not trial.user_attrs.get("early_rejected", False)
        and "schedule" in trial.user_attrs
    )


# ---------------------------------------------------------------------------- results
class StudyResults:
    """The results of one study: tables, picking, and the study's task.

    Build it with :func:`load_study`, or wrap an ``optuna.Study`` directly.
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.unpruned: dict[str, Any] = unpruned_metrics(self.study)  # the unpruned model's metrics
        self.objectives: list[str] = study_keys.objective_names(study)
        self._task: Task | None = None

    @property
    def baseline(self) -> dict[str, Any]:
        """The older name of :attr:`unpruned`, kept for code that reads it."""
        return self.unpruned

    def __repr__(self) -> str:
        return f"StudyResults(study_name={self.study.study_name!r}, objectives={self.objectives})"

    # ------------------------------------------------------------------ task
    def task(self) -> Task:
        """The study's task, rebuilt from its spec once and cached."""
        if self._task is None:
            self._task = rebuild_task(self.study)
        return self._task

    # ------------------------------------------------------------------ tables
    def _metrics(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return trial_metrics(trial, self.unpruned)

    def _table(self, trials: list[optuna.trial.FrozenTrial]) -> pd.DataFrame:
        return trials_table(self.study, trials).set_index("number")

    def trials_table(self) -> pd.DataFrame:
        """Every trial (any state), one row each, indexed by trial number."""
        return self._table(self.study.get_trials(deepcopy=False))

    def pareto_trials(self, tolerance: float | None = None) -> list[optuna.trial.FrozenTrial]:
        """Feasible, complete, fully run trials on the study's front: those no other such trial
        beats by more than ``tolerance`` points of accuracy (default: the study's
        ``front_tolerance``; 0 gives the strict Pareto front). See
        :func:`autoprune.study.pareto_front`."""
        return pareto_front(self.study, tolerance)

    def pareto(self, tolerance: float | None = None) -> pd.DataFrame:
        """The front's trials (:meth:`pareto_trials`) as a DataFrame indexed by trial number, with the columns of
        :func:`trials_table` (objective values, accuracy, accuracy drop, speedup and
        compression against the unpruned model, the size and compute records, a schedule
        summary)."""
        return self._table(self.pareto_trials(tolerance))

    def candidates(self) -> list[optuna.trial.FrozenTrial]:
        """Trials :meth:`pick` chooses among: complete, feasible, not early-rejected."""
        return [t for t in self.study.get_trials(deepcopy=False) if _is_usable(t) and study_keys.is_feasible(t)]

    # ------------------------------------------------------------------ picking
    def _pick_lm(self, max_increase: float | None, max_size: float | None, minimize: str) -> PickedTrial:
        """``pick`` in a language-model study: bounds on the relative validation-perplexity
        increase and the sparse size, then the smallest ``perplexity`` or ``size``."""
        keys = {"perplexity": "perplexity", "size": "sparse_bytes"}
        if is_structure_study(self.study):
            keys["latency"] = "speedup"  # the largest speedup in the study's latency regime
        if minimize not in keys:
            raise ConfigError(f"`minimize` must be one of {sorted(keys)} in a perplexity study, but got {minimize=!r}.")
        pool = [t for t in self.candidates()]
        if not pool:
            raise NoQualifyingTrialError(f"study {self.study.study_name!r} has no complete, feasible trial to pick from")
        applied = []
        for key, bound, text in (
            ("perplexity_increase", max_increase, "validation perplexity increase <= {:+.1%}"),
            ("sparse_bytes", max_size, "sparse_bytes <= {:g} bytes"),
        ):
            if bound is None:
                continue
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or math.isnan(bound):
                raise ConfigError(f"the bound on {key} must be a number, but got {bound!r}.")
            kept = [t for t in pool if _number(t.user_attrs.get(key)) <= bound]
            if not kept:
                best = min(pool, key=lambda t: _finite_or_inf(t.user_attrs.get(key)))
                raise NoQualifyingTrialError(
                    f"no trial has {text.format(bound)}; the smallest is {format_value(_number(best.user_attrs.get(key)))} "
                    f"(trial {best.number})"
                )
            pool = kept
            applied.append(text.format(bound))
        if minimize == "latency":
            best = min(pool, key=lambda t: (-_number(t.user_attrs.get("speedup")),
                                            _finite_or_inf(t.user_attrs.get("perplexity")), t.number))  # fmt: skip
            rule = "largest speedup"
        else:
            best = min(pool, key=lambda t: (_finite_or_inf(t.user_attrs.get(keys[minimize])),
                                            _finite_or_inf(t.user_attrs.get("perplexity")), t.number))  # fmt: skip
            rule = f"smallest {keys[minimize]}"
        return self._picked(best, rule + (f" with {' and '.join(applied)}" if applied else ""))

    def _picked(self, trial: optuna.trial.FrozenTrial, rule: str) -> PickedTrial:
        metrics = self._metrics(trial)
        if is_lm_study(self.study):
            lm_keys = ("perplexity", "perplexity_increase", "test_perplexity", "test_perplexity_increase", "sparsity",
                       "sparse_bytes", "compression", "level", "params_removed", "speedup", "prefill_speedup",
                       "decode_speedup")  # fmt: skip
            metrics = {k: trial.user_attrs[k] for k in lm_keys if k in trial.user_attrs}
        metrics.update({k: v for k, v in trial.user_attrs.items() if k.startswith("time_") or k == "target"})
        return PickedTrial(
            number=trial.number,
            schedule=study_keys.trial_schedule(trial),
            metrics=metrics,
            role=trial.user_attrs.get("role", study_keys.ROLE_SEARCH),
            feasible=study_keys.is_feasible(trial),
            rule=rule,
            _study_task=self.task,
        )

    def _by_number(self, number: int) -> PickedTrial:
        from optuna.trial import TrialState

        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        trial = trials.get(number)
        if trial is None:
            last = max(trials, default=-1)
            raise NoQualifyingTrialError(f"no trial {number} in study {self.study.study_name!r} (trials 0..{last})")
        if trial.state != TrialState.COMPLETE:
            error = trial.user_attrs.get("error")
            why = f": {error}" if error else ""
            raise NoQualifyingTrialError(f"trial {number} is {trial.state.name}, not COMPLETE{why}")
        if trial.user_attrs.get("early_rejected", False):
            raise NoQualifyingTrialError(
                f"trial {number} was rejected early; its metrics do not describe its whole schedule"
            )
        if "schedule" not in trial.user_attrs:
            raise NoQualifyingTrialError(f"trial {number} records no schedule")
        if not study_keys.is_feasible(trial):
            _logger.warning("trial %d does not meet the study's constraints", number)
        return self._picked(trial, f"trial {number}")

    def pick(
        self,
        *,
        trial: int | None = None,
        max_accuracy_drop: float | None = None,
        max_latency_ms: float | None = None,
        max_size_bytes: float | None = None,
        minimize: str = "latency",
        max_metric_increase: float | None = None,
    ) -> PickedTrial:
        """Pick one trial by number or by rule.

        Rules choose among every feasible, complete trial that ran its whole schedule, not
        only the Pareto front: when ``minimize`` and the bounds are the study's objectives,
        the winner is on the front anyway, and when they are not (say, minimising MACs in an
        accuracy/latency study) the best trial may lie off it. Ties go to the smaller
        accuracy drop, then the lower trial number.

        Args:
            trial: pick this trial number (no other rule may be given).
            max_accuracy_drop: keep trials whose accuracy drop is at most this (task units:
                percentage points for the built-in tasks).
            max_latency_ms: keep trials at most this slow.
            max_size_bytes: keep trials whose sparse size is at most this.
            minimize: among those kept, the smallest ``latency``, ``size``, ``params``
                (non-zero), ``macs`` or ``accuracy_drop``; in a language-model study
                (perplexity), ``perplexity`` or ``size``.
            max_metric_increase: in a language-model study, keep trials whose validation
                perplexity is at most this much above the dense model's, relatively (0.10: +10%).

        Raises:
            NoQualifyingTrialError: no trial meets the rules (the message names the rule and
                the best value available).
            ConfigError: the rules are inconsistent.

        Example:
            >>> results.pick(max_accuracy_drop=1.0, minimize="latency").number  # doctest: +SKIP
            17
        """
        if is_lm_study(self.study):
            if max_accuracy_drop is not None or max_latency_ms is not None:
                raise ConfigError(
                    "this study scores perplexity (lower is better): pick with max_metric_increase (0.10 is +10%) "
                    "and/or max_size_bytes, not max_accuracy_drop or max_latency_ms"
                )
            if trial is not None:
                if max_metric_increase is not None or max_size_bytes is not None:
                    raise ConfigError("give either a trial number or rules (max_metric_increase, ...), not both")
                return self._by_number(int(trial))
            structure = is_structure_study(self.study)  # trials timed: the fastest is what "latency" asks
            return self._pick_lm(max_metric_increase, max_size_bytes,
                                 "perplexity" if minimize == "latency" and not structure else minimize)  # fmt: skip
        if max_metric_increase is not None:
            raise ConfigError(
                f"max_metric_increase applies to studies whose metric is better lower (perplexity); study "
                f"{self.study.study_name!r} scores {self.study.user_attrs.get('metric_name', 'accuracy')}: use "
                "max_accuracy_drop"
            )
        if minimize not in MINIMIZE_KEYS:
            raise ConfigError(f"`minimize` must be one of {sorted(MINIMIZE_KEYS)}, but got {minimize=!r}.")
        bounds = [
            ("accuracy_drop", max_accuracy_drop),
            ("latency_ms", max_latency_ms),
            ("sparse_bytes", max_size_bytes),
        ]
        if trial is not None:
            if any(b is not None for _, b in bounds):
                raise ConfigError(
                    "give either a trial number or rules (max_accuracy_drop, max_latency_ms, ...), not both"
                )
            return self._by_number(int(trial))
        for key, bound in bounds:
            if bound is not None and (not isinstance(bound, (int, float)) or math.isnan(bound)):
                raise ConfigError(f"the bound on {key} must be a number, but got {bound!r}.")

        pool = [(t, self._metrics(t)) for t in self.candidates()]
        if not pool:
            raise NoQualifyingTrialError(
                f"study {self.study.study_name!r} has no complete, feasible trial to pick from"
            )
        applied: list[str] = []
        for key, bound in bounds:
            if bound is None:
                continue
            rule = f"{key} <= {bound:g}{_UNITS.get(key, '')}"
            measured = [(t, m) for t, m in pool if not math.isnan(_number(m.get(key)))]
            kept = [(t, m) for t, m in measured if _number(m[key]) <= bound]
            if not kept:
                among = f" among the {len(pool)} trials with {' and '.join(applied)}" if applied else ""
                if not measured:
                    raise NoQualifyingTrialError(f"no trial has {rule}{among}: no trial records {key}")
                best_t, best_m = min(measured, key=lambda tm: (_number(tm[1][key]), tm[0].number))
                raise NoQualifyingTrialError(
                    f"no trial has {rule}{among}; the smallest is {format_value(_number(best_m[key]))} (trial {best_t.number})"
                )
            pool = kept
            applied.append(rule)

        target = MINIMIZE_KEYS[minimize]
        scored = [(t, m) for t, m in pool if not math.isnan(_number(m.get(target)))]
        if not scored:
            raise NoQualifyingTrialError(f"cannot minimize {minimize}: no qualifying trial records {target}")
        best, _ = min(
            scored,
            key=lambda tm: (_number(tm[1][target]), _finite_or_inf(tm[1]["accuracy_drop"]), tm[0].number),
        )
        rule = f"smallest {target}" + (f" with {' and '.join(applied)}" if applied else "")
        return self._picked(best, rule)
