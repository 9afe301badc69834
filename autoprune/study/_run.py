"""The run: open or join the study, measure the references, then the trial loop, in this
process or in local worker processes.

:func:`search` is the public entry point; :func:`run_search` runs a resolved config on a
built task (``autoprune search`` calls it); :func:`run_worker` is what each local worker
process runs. Every process builds its :class:`SearchSetup` (preflight and SearchSpace) once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import optuna

from autoprune._cpus import usable_cpus
from autoprune._errors import AutopruneError, ConfigError
from autoprune._lock import MachineLock, machine_lock
from autoprune.config import DEFAULT_STORAGE, SearchConfig
from autoprune.lm import search_allocation
from autoprune.study._neighbours import enqueue_neighbour
from autoprune.study._objective import Objective, SearchSetup
from autoprune.study._progress import progress_bar
from autoprune.study._references import REFERENCE_FAMILIES
from autoprune.study._refine import refine_references
from autoprune.study._storage import counted_trials, create_or_join_study, fail_interrupted_leftovers
from autoprune.study._unpruned import DUPLICATE, enqueue_unpruned, unpruned_metrics, unpruned_trials, wait_for_unpruned
from autoprune.study._workers import run_in_workers
from autoprune.study.keys import FIDELITY_REPEAT, ROLE_UNPRUNED
from autoprune.tasks import Task, get_task

__all__ = ["build_task", "run_search", "run_worker", "search"]

_logger = logging.getLogger(__name__)
# Repeats replaced per run: as many as the trials asked, and at least this many (a short
# run, such as a resume of 2 trials, gets room to leave an explored corner).
_MIN_REPEAT_ROOM = 20
_Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def build_task(cfg: SearchConfig) -> Task:
    """The task a config names (``cfg.task`` with ``cfg.task_options``)."""
    return get_task(cfg.task, **cfg.task_options)


def search(
    task: Task | str = "digits",
    *,
    objectives: list[str] | tuple[str, ...] | None = None,
    n_trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    config: SearchConfig | None = None,
    progress: bool = False,
    **options: Any,
) -> optuna.Study:
    """Search pruning schedules for ``task``; returns the Optuna study (resumable).

    Running it again with the same study runs only the trials still missing. Options not
    named here are fields of :class:`autoprune.config.SearchConfig` (``workers``,
    ``sampler``, ``seed``, ``target``, ``constraints``, ``space``...). ``n_trials`` and
    ``study_name`` are Optuna's names for the config's ``trials`` and ``study`` (the TOML
    keys and ``--trials``/``--study`` of the CLI); give one of each pair, not both.

    Example:
        >>> import autoprune as ap
        >>> study = ap.search("digits", objectives=["accuracy", "latency"], n_trials=20,
        ...                   storage="sqlite:///studies/demo.db", study_name="demo")  # doctest: +SKIP
    """
    for optuna_name, value, config_name in (("n_trials", n_trials, "trials"), ("study_name", study_name, "study")):
        if value is not None and options.get(config_name) is not None:
            raise ConfigError(
                f"`{optuna_name}={value!r}` and `{config_name}={options[config_name]!r}` name the same setting; give one of them"
            )
    if isinstance(task, str):  # built once here: its metric decides which search runs
        task = get_task(task, **(config.task_options if config is not None else {}))
    if isinstance(task, Task) and not task.higher_is_better:
        # a perplexity task: the allocation search (options: sparsity, criterion, granularity, seed...)
        if objectives is not None:
            raise ConfigError(f"task {task.name!r} scores perplexity: its objectives are set by `sparsity`, not objectives")
        return search_allocation(task, n_trials=n_trials or 40, storage=storage or DEFAULT_STORAGE,
                                 study_name=study_name or task.name, **options)  # fmt: skip
    base = config or SearchConfig()
    task_name = task if isinstance(task, str) else (task.spec.get("name") or task.name)
    overrides: dict[str, Any] = dict(options)
    overrides.update(
        task=task_name,
        objectives=list(objectives) if objectives is not None else None,
        trials=n_trials,
        storage=storage,
        study=study_name,
    )
    if isinstance(task, Task):
        overrides["task_options"] = {k: v for k, v in task.spec.items() if k != "name"}
    cfg = base.merged(**overrides)
    task_obj = task if isinstance(task, Task) else build_task(cfg)
    if cfg.workers > 1 and not task_obj.spec.get("name"):
        raise ConfigError("workers > 1 needs a task that workers can rebuild: a built-in name or 'module:factory'")
    return run_search(cfg, task_obj, progress=progress)


def run_search(cfg: SearchConfig, task: Task, *, progress: bool = False) -> optuna.Study:
    """Run (or resume) the search described by ``cfg`` on ``task``."""
    lock = machine_lock()
    setup = SearchSetup.build(task, cfg, lock)
    study = create_or_join_study(cfg, on_create=lambda new: enqueue_unpruned(new, setup))
    fail_interrupted_leftovers(study, cfg)
    extra = _ensure_references(study, setup, lock)
    if cfg.worker_trials is not None:
        missing = max(0, cfg.worker_trials - extra)
    else:
        missing = max(0, cfg.trials - len(counted_trials(study)))
    if missing == 0:
        return study
    with progress_bar(study, cfg, missing) if progress else contextlib.nullcontext():
        if cfg.workers > 1:
            # Enqueued trials run here first: SQLite has no SELECT ... FOR UPDATE, so two
            # processes could pop the same waiting trial.
            waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
            first = min(waiting, missing)
            optimize(study, setup, first, lock)
            missing -= first
        if cfg.workers == 1 or missing <= 1:
            optimize(study, setup, missing, lock)
        else:
            workers = min(cfg.workers, missing)
            shares = [missing // workers + (i < missing % workers) for i in range(workers)]
            data = cfg.to_dict(mask=False)
            threads = max(1, usable_cpus() // workers)
            calls = [(data, share, i + 1) for i, share in enumerate(shares)]
            run_in_workers(run_worker, calls, threads=threads, lock=lock)
    return study


def run_worker(cfg_data: dict[str, Any], n_trials: int, worker: int) -> int:
    """Run ``n_trials`` trials of the study in this process (a local worker process)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = SearchConfig.from_dict(cfg_data, source="worker")
    lock = machine_lock()
    with lock.busy():  # starting up (building the task) is busy work too
        task = build_task(cfg)
    setup = SearchSetup.build(task, cfg, lock)
    study = create_or_join_study(cfg, seed_offset=worker)  # may wait for the study's creator: not busy
    return optimize(study, setup, n_trials, lock)


def _ensure_references(study: optuna.Study, setup: SearchSetup, lock: MachineLock) -> int:
    """Evaluate the unpruned model first: accuracy drops and speedups are measured against it.
    The worker that evaluates it also enqueues the uniform warm-start schedules. Workers that
    start while another one evaluates it wait for its metrics. Returns how many other
    trials ran here (another worker may pop the unpruned trial first; ours is then a search
    trial, and it counts toward this worker's share)."""
    S = optuna.trial.TrialState
    if unpruned_metrics(study):
        return 0
    if not unpruned_trials(study, S.WAITING, S.RUNNING, S.COMPLETE):
        # The creator enqueued it with the study; it is missing only when it failed before
        # (resuming after that) or the study predates it.
        enqueue_unpruned(study, setup)
    ran: list[optuna.trial.FrozenTrial] = []
    if unpruned_trials(study, S.WAITING):
        # pops the oldest waiting trial: the unpruned one, unless another worker was faster
        optimize(study, setup, 1, lock, callbacks=[lambda _study, trial: ran.append(trial)])
    if not unpruned_metrics(study) and not unpruned_trials(study, S.RUNNING):
        errors = [t.user_attrs.get("error") for t in unpruned_trials(study, S.FAIL) if t.user_attrs.get("error")]
        raise AutopruneError(f"evaluating the unpruned model failed: {errors[-1] if errors else 'unknown error'}")
    wait_for_unpruned(study)
    return sum(t.user_attrs.get("role") != ROLE_UNPRUNED for t in ran)


@contextlib.contextmanager
def _optimizer_steps_are_boundaries(lock: MachineLock) -> Iterator[None]:
    """Let a pending measurement in at every optimiser step of this process."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        lock.step()

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def optimize(
    study: optuna.Study, setup: SearchSetup, n_trials: int, lock: MachineLock, callbacks: list[_Callback] | None = None
) -> int:
    """Run ``n_trials`` trials of ``study`` in this process; returns ``n_trials``."""
    if n_trials <= 0:
        return 0
    objective = Objective(setup, unpruned_metrics(study) or None, lock)
    duplicates: list[int] = []
    repeats: list[int] = []

    def note_duplicate(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if DUPLICATE in str(trial.user_attrs.get("error", "")):
            duplicates.append(trial.number)
        elif trial.user_attrs.get("fidelity") == FIDELITY_REPEAT:
            repeats.append(trial.number)

    def refine(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # After a reference (now stored as finished): when it was the last one, bracket
        # where each reference family crosses the constraints. Once no reference is left to
        # run, a share of the trials are neighbours of the fastest feasible one.
        S = optuna.trial.TrialState
        if trial.user_attrs.get("role") in REFERENCE_FAMILIES:
            running = study.get_trials(deepcopy=False, states=(S.RUNNING,))
            room = setup.cfg.trials - len(counted_trials(study)) - len(running)
            with lock.busy():
                added = refine_references(study, setup, room)
            for ref in added:
                _logger.info("reference added where its family crosses the constraints: %s", ref)
        if setup.cfg.neighbour_share <= 0:
            return
        pending = study.get_trials(deepcopy=False, states=(S.WAITING, S.RUNNING))
        if any(t.state == S.WAITING or t.user_attrs.get("role") in REFERENCE_FAMILIES for t in pending):
            return
        room = setup.cfg.trials - len(counted_trials(study)) - len(pending)
        with lock.busy():
            enqueue_neighbour(study, setup, room)

    with _optimizer_steps_are_boundaries(lock):
        remaining, replaced = n_trials, 0
        while remaining > 0:
            # A duplicate unpruned trial popped from the queue is not one of the n trials
            # asked; nor is a repeat (not run: it would only repeat an earlier trial), up to
            # as many again as asked (at least _MIN_REPEAT_ROOM), so a sampler stuck on
            # explored points still stops.
            duplicates.clear()
            repeats.clear()
            study.optimize(
                objective,
                n_trials=remaining,
                catch=(Exception,),
                gc_after_trial=False,
                callbacks=[*(callbacks or []), note_duplicate, refine],
            )
            extra = min(len(repeats), max(n_trials, _MIN_REPEAT_ROOM) - replaced)
            replaced += extra
            remaining = len(duplicates) + extra
            if extra < len(repeats):
                _logger.warning(
                    "the sampler kept proposing schedules already run (%d repeats not counted): the search stops "
                    "%d trial(s) short of the %d asked here",
                    replaced,
                    len(repeats) - extra,
                    n_trials,
                )
    return n_trials
