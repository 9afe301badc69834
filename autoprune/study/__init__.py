"""The study stage: runs the search as an Optuna study and reads its results.

In the order of the data flow, one job per module:

- :mod:`~autoprune.study.keys`: the contract of what a study stores (user attributes,
  roles, objectives, metric names); every reader goes through it.
- ``_front``: :func:`pareto_front`, the trials a user picks from.
- ``_storage``: the Optuna storage, creating or joining a study, counting its trials.
- ``_setup``: what every trial of a process shares, built once (:class:`SearchSetup`:
  the preflight and the SearchSpace), the space that can pay and the study's target.
- ``_objective``: one trial (schedule, prune, measure, record).
- ``_unpruned``: the unpruned model's trial and its stored metrics; ``_references``: the reference
  trials (uniform, sensitivity, global); ``_refine``: more references where each family crosses the constraints.
- ``_run``: :func:`search` and :func:`run_search`: references first, then the trial loop.
- ``_workers``: local worker processes.
- ``_progress``: the progress bar.
- ``_table``: :func:`trials_table`, the one trials table (CLI, CSV, Pareto table).
- ``_results``: :func:`load_study` and :class:`StudyResults`: the Pareto front, picking a trial.
- ``_picked``: :class:`PickedTrial`: a picked trial's Schedule and metrics, applying it.
"""

from __future__ import annotations

from autoprune.study import keys
from autoprune.study._front import pareto_front, sure_speedup
from autoprune.study._objective import Objective
from autoprune.study._picked import PickedTrial
from autoprune.study._references import scan_task
from autoprune.study._results import MINIMIZE_KEYS, StudyResults, load_study, rebuild_task
from autoprune.study._run import build_task, run_search, search
from autoprune.study._setup import SearchSetup, paying_space, study_target
from autoprune.study._storage import check_joinable, counted_trials, create_or_join_study, make_storage, stored_config
from autoprune.study._table import trials_table

__all__ = [
    "scan_task",
    "MINIMIZE_KEYS",
    "Objective",
    "PickedTrial",
    "SearchSetup",
    "StudyResults",
    "build_task",
    "check_joinable",
    "counted_trials",
    "keys",
    "load_study",
    "make_storage",
    "create_or_join_study",
    "pareto_front",
    "paying_space",
    "rebuild_task",
    "run_search",
    "search",
    "stored_config",
    "study_target",
    "sure_speedup",
    "trials_table",
]
