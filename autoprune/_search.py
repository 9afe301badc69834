"""The search: a multi-objective Optuna study over pruning schedules.

Flow of one trial: the SearchSpace turns the trial into a Schedule, the executor prunes a
copy of the task's model (fine-tuning between steps), the evaluator measures it, and the
trial records the Schedule, every metric and how long each part took. Constraints go
through Optuna (``trial.set_constraint``) so infeasible trials never enter the Pareto front.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from autoprune import __version__
from autoprune._errors import AutopruneError, ConfigError
from autoprune.config import SearchConfig, driver_url, mask_url
from autoprune.executor import apply_schedule
from autoprune.preflight import prunable_layers
from autoprune.schedule import Schedule
from autoprune.space import SearchSpace
from autoprune.study_keys import (
    OBJECTIVES,
    ROLE_SEARCH,
    ROLE_UNIFORM,
    ROLE_UNPRUNED,
    is_feasible,
)
from autoprune.tasks import Task
from autoprune.tasks import get as get_task

__all__ = ["search", "run_search", "open_study", "make_storage", "counted_trials", "run_worker"]

_logger = logging.getLogger(__name__)
_DONE_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)


class _EarlyReject(Exception):
    def __init__(self, accuracy: float, step: int) -> None:
        super().__init__(f"accuracy {accuracy:.3f} after step {step} is past the constraint")
        self.accuracy = accuracy
        self.step = step


# ---------------------------------------------------------------------------- storage / study
def make_storage(cfg: SearchConfig) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage for ``cfg.storage`` (SQLite folders are created)."""
    url = driver_url(cfg.storage)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    heartbeat = effective_heartbeat(cfg)
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = {
            "heartbeat_interval": heartbeat,
            "grace_period": cfg.grace_period or 3 * heartbeat,
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=cfg.retries),
        }
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except ImportError as exc:
            raise ConfigError(f"cannot open storage {mask_url(url)!r}: {_first_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - bad URL, server down, or a race (below)
            # Workers starting at once on an empty database race to create Optuna's tables;
            # the losers see "already exists" errors and succeed on a second try.
            if attempt == 2:
                raise ConfigError(
                    f"cannot open storage {mask_url(url)!r}: {type(exc).__name__}: {_first_line(exc)}"
                ) from None
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def effective_heartbeat(cfg: SearchConfig) -> int | None:
    """Heartbeats are on by default for server databases (workers on many machines), off
    for SQLite (one machine: a resumed run cleans up after a stopped one)."""
    if cfg.heartbeat_interval:
        return cfg.heartbeat_interval
    return None if cfg.storage.startswith("sqlite") else 10


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _make_sampler(cfg: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "nsga2":
        pop = cfg.population_size or max(8, min(50, cfg.trials // 4))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
    if cfg.sampler == "nsga3":
        pop = cfg.population_size or max(8, min(50, cfg.trials // 4))
        return optuna.samplers.NSGAIIISampler(seed=seed, population_size=pop)
    if cfg.sampler == "tpe":
        # constant_liar: trials other workers are still running count as bad results while a
        # worker samples, so parallel workers spread out instead of sampling the same region;
        # a one-worker run never has another running trial, so it samples exactly as without
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(5, min(10, cfg.trials // 4)), constant_liar=True
        )
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return optuna.samplers.GPSampler(seed=seed)


def open_study(
    cfg: SearchConfig,
    *,
    create: bool = True,
    check: bool = True,
    seed_offset: int = 0,
    on_create: Callable[[optuna.Study], None] | None = None,
) -> optuna.Study:
    """Create or load the study of ``cfg``; a joining run must agree on the study's identity
    (``check=False`` for readers that only look at the study). ``on_create`` runs only in
    the one process that really created the study, even when several start at once."""
    storage = make_storage(cfg)
    name = cfg.study_name
    directions: list[Any] = [OBJECTIVES[o][1] for o in cfg.objectives]
    sampler = _make_sampler(cfg, cfg.seed + seed_offset)
    existing = _study_names(storage)
    if name not in existing:
        if not create:
            raise ConfigError(
                f"no study {name!r} in {mask_url(cfg.storage)}; studies there: {sorted(existing) or 'none'}"
            )
        try:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions)
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another worker created it a moment ago: join it below
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(cfg.objectives))
            study.set_user_attr("objectives", list(cfg.objectives))
            study.set_user_attr("autoprune_version", __version__)
            if on_create is not None:
                on_create(study)
            study.set_user_attr("config", cfg.to_dict())  # last: joiners wait for it
            return study
    return _join(cfg, storage, sampler=sampler, check=check)


def check_joinable(cfg: SearchConfig) -> None:
    """Refuse early a run whose settings contradict the existing study it names (nothing
    happens when the study does not exist yet: :func:`run_search` creates it)."""
    storage = make_storage(cfg)
    if cfg.study_name in _study_names(storage):
        _join(cfg, storage)


def _study_names(storage: optuna.storages.BaseStorage) -> set[str]:
    return {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}


def _join(
    cfg: SearchConfig,
    storage: optuna.storages.BaseStorage,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    check: bool = True,
) -> optuna.Study:
    """Load the existing study of ``cfg``, once its creator has written the config, and
    refuse it when ``check`` and the settings contradict it."""
    study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=sampler)
    stored = _wait_for_attr(study, "config", 60.0)
    if stored is not None and check:
        _check_same_identity(cfg, stored, cfg.study_name)
    return study


def _wait_for_attr(study: optuna.Study, key: str, seconds: float) -> Any:
    """A study attribute that its creator may still be writing (None if it never comes)."""
    deadline = time.monotonic() + seconds
    while (value := study.user_attrs.get(key)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def _check_same_identity(cfg: SearchConfig, stored: dict[str, Any], name: str) -> None:
    mine = cfg.identity()
    try:
        # Options added since the study was created take their defaults (an older study's
        # stored config simply lacks them), so resuming it is not refused for that.
        stored = SearchConfig.from_dict({**stored, "storage": cfg.storage}, source=f"study {name!r}").identity()
    except AutopruneError:
        pass  # written by a newer autoprune: compare what is there
    for key in mine:
        theirs = stored.get(key)
        if json.dumps(mine[key], sort_keys=True) != json.dumps(theirs, sort_keys=True):
            raise ConfigError(
                f"study {name!r} was created with {key} = {json.dumps(theirs, sort_keys=True)}, "
                f"but this run asks for {key} = {json.dumps(mine[key], sort_keys=True)}; "
                "use the same settings (or just --study/--storage to join), or a new --study name"
            )


def stored_config(study_name: str, storage_url: str) -> SearchConfig | None:
    """The config saved in an existing study, or None when the study does not exist."""
    storage = make_storage(SearchConfig(storage=storage_url))
    if study_name not in _study_names(storage):
        return None
    study = optuna.load_study(study_name=study_name, storage=storage)
    data = _wait_for_attr(study, "config", 60.0)
    if data is None:
        raise ConfigError(f"study {study_name!r} was not written by autoprune (no saved config)")
    data = dict(data)
    data["storage"] = storage_url  # the stored one is masked
    return SearchConfig.from_dict(data, source=f"study {study_name!r}")


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward the budget: finished ones, except those cut short by Ctrl-C."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=_DONE_STATES)
        if not t.user_attrs.get("interrupted") and t.user_attrs.get("role") != ROLE_UNPRUNED
    ]


def _fail_interrupted_leftovers(study: optuna.Study, cfg: SearchConfig) -> None:
    """Without heartbeats nobody else fails a RUNNING trial whose process died (Ctrl-C,
    kill): on resume of a local study, mark them failed and not counted."""
    if effective_heartbeat(cfg):
        return  # Optuna fails stale trials itself (and retries them)
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_user_attr(t._trial_id, "error", "interrupted: left RUNNING by a stopped run")
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


# ---------------------------------------------------------------------------- one trial
class _Objective:
    def __init__(self, task: Task, cfg: SearchConfig, study: optuna.Study) -> None:
        from autoprune.evaluation import LatencyCache, Target

        self.task = task
        self.cfg = cfg
        self.layers = prunable_layers(task.model, task.example_inputs)
        self.space = SearchSpace(self.layers, cfg.space)
        target = Target.parse(cfg.target)
        if target.threads is None and target.device == "cpu":
            target = type(target)(**{**target.__dict__, "threads": os.cpu_count() or 1})
        self.target = target
        cache_path = _latency_cache_path(cfg)
        self.cache = LatencyCache(cache_path) if cache_path is not None else None
        self.baseline: dict[str, Any] | None = study.user_attrs.get("baseline")
        self.host = socket.gethostname()

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        role = trial.user_attrs.get("role", ROLE_SEARCH)
        _HOLD.acquire()
        try:
            return self._run(trial, role)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("error", "interrupted by the user")
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {_first_line(exc)}")
            raise
        finally:
            _HOLD.release()

    def _run(self, trial: optuna.Trial, role: str) -> tuple[float, ...]:
        from autoprune.evaluation import evaluate

        seed = self.cfg.seed
        if role == ROLE_UNPRUNED and "baseline" in trial.study.user_attrs:
            # A second unpruned trial: a heartbeat retry of one whose worker died after
            # publishing, or two workers resuming a failed baseline at once. Measuring again
            # would only publish the references twice.
            first = trial.study.user_attrs.get("baseline_trial")
            raise AutopruneError(
                f"{_DUPLICATE}: the unpruned model was already measured"
                + (f" in trial {first}" if first is not None else "")
                + "; this copy is not evaluated"
            )
        if role != ROLE_UNPRUNED and self.baseline is None:
            # Never wait for another worker while holding the busy lock: its measurement of
            # the unpruned model would wait for us in turn.
            _HOLD.release()
            try:
                self.baseline = _wait_for_baseline(trial.study)
            finally:
                _HOLD.acquire()
        if role == ROLE_UNPRUNED:
            schedule = Schedule(seed=seed)
            self.space.suggest(trial, seed=seed)  # records the (all-zero) params for the sampler
        elif role == ROLE_UNIFORM:
            amount = float(trial.user_attrs["uniform_amount"])
            self.space.suggest(trial, seed=seed)
            schedule = self.space.uniform_schedule(amount, seed=seed)
        else:
            schedule = self.space.suggest(trial, seed=seed)
        trial.set_user_attr("role", role)
        trial.set_user_attr("schedule", schedule.to_json())
        trial.set_user_attr("schedule_summary", schedule.summary())
        trial.set_user_attr("host", self.host)

        timings = {"finetune": 0.0, "early_eval": 0.0}
        fine_tune = self._timed_fine_tune(timings)
        on_step = self._early_check(timings) if role == ROLE_SEARCH else None
        t0 = time.perf_counter()
        early: _EarlyReject | None = None
        pruned: nn.Module | None = None
        try:
            pruned = apply_schedule(
                self.task.model, schedule, example_inputs=self.task.example_inputs, fine_tune=fine_tune, on_step=on_step
            )
        except _EarlyReject as exc:
            early = exc
        total = time.perf_counter() - t0
        trial.set_user_attr("time_prune_s", round(total - timings["finetune"] - timings["early_eval"], 4))
        trial.set_user_attr("time_finetune_s", round(timings["finetune"], 4))
        trial.set_user_attr("early_rejected", early is not None)

        if early is not None:
            return self._record_early_reject(trial, early)
        assert pruned is not None
        # Accuracy and MACs are busy work like training (other workers' measurements wait
        # for them); only our own latency measurement lets go, or it would wait for itself.
        metrics = evaluate(
            pruned,
            self.task,
            target=self.target,
            cache=self.cache,
            time_budget_s=self.cfg.latency_budget_s,
            around_latency=_not_busy,
        ).as_dict()
        if not math.isfinite(metrics["accuracy"]):
            raise FloatingPointError(f"accuracy is {metrics['accuracy']} (NaN/inf weights after fine-tuning?)")
        trial.set_user_attr("time_eval_s", round(float(metrics.get("time_eval_s", 0.0)), 4))
        trial.set_user_attr("time_latency_s", round(float(metrics.get("time_latency_s", 0.0)), 4))
        values = self._record(trial, metrics)
        if role == ROLE_UNPRUNED:
            self.baseline = dict(metrics)
            self._publish_baseline(trial.study, metrics, trial.number)
        return values

    def _publish_baseline(self, study: optuna.Study, metrics: dict[str, Any], number: int) -> None:
        """Only the worker that ran the unpruned trial gets here (popping a waiting trial is
        atomic on a server database), so the references are enqueued exactly once."""
        if "baseline" in study.user_attrs:
            return  # a second run of the unpruned trial (a heartbeat retry): references exist
        study.set_user_attr("layers", [i.as_dict() for i in self.layers])
        study.set_user_attr("task", dict(self.task.spec))
        for amount in self.cfg.reference_amounts:
            study.enqueue_trial(
                self.space.uniform_params(amount), user_attrs={"role": ROLE_UNIFORM, "uniform_amount": amount}
            )
        study.set_user_attr("baseline_trial", number)
        # Last: a worker waiting for the baseline may start as soon as it appears.
        study.set_user_attr("baseline", {k: metrics[k] for k in _BASELINE_KEYS if k in metrics})

    def _timed_fine_tune(self, timings: dict[str, float]) -> Callable[[nn.Module, int], None] | None:
        if self.task.fine_tune is None:
            return None
        fine_tune = self.task.fine_tune

        def run(model: nn.Module, steps: int) -> None:
            t = time.perf_counter()
            fine_tune(model, steps)
            timings["finetune"] += time.perf_counter() - t

        return run

    def _early_check(self, timings: dict[str, float]) -> Callable[[nn.Module, int, int], None] | None:
        max_drop = self.cfg.constraints.get("max_accuracy_drop")
        if max_drop is None or self.baseline is None:
            return None
        limit = float(max_drop) + self.cfg.early_reject_margin
        base = float(self.baseline["accuracy"])

        def check(model: nn.Module, step: int, steps: int) -> None:
            if step >= steps:
                return  # the final step is measured in full anyway
            t = time.perf_counter()
            acc = float(self.task.evaluate(model))
            timings["early_eval"] += time.perf_counter() - t
            if base - acc > limit:
                raise _EarlyReject(acc, step)

        return check

    def _record_early_reject(self, trial: optuna.Trial, early: _EarlyReject) -> tuple[float, ...]:
        assert self.baseline is not None
        # Not worth measuring: it is infeasible. Size and speed get no credit (baseline values).
        metrics = dict(self.baseline)
        metrics.update(accuracy=early.accuracy, latency_cached=True, time_eval_s=0.0, time_latency_s=0.0)
        trial.set_user_attr("early_rejected_step", early.step)
        trial.set_user_attr("time_eval_s", 0.0)
        trial.set_user_attr("time_latency_s", 0.0)
        return self._record(trial, metrics)

    def _record(self, trial: optuna.Trial, metrics: dict[str, Any]) -> tuple[float, ...]:
        base = self.baseline or metrics
        derived = {
            "accuracy_drop": float(base["accuracy"]) - float(metrics["accuracy"]),
            "speedup": float(base["latency_ms"]) / float(metrics["latency_ms"]) if metrics["latency_ms"] > 0 else 0.0,
            "compression": float(base["dense_bytes"]) / float(metrics["sparse_bytes"]) if metrics["sparse_bytes"] else 0.0,
        }
        for key, value in {**metrics, **derived}.items():
            trial.set_user_attr(key, value)
        feasible = True
        limits = {
            "accuracy_drop": ("max_accuracy_drop", derived["accuracy_drop"]),
            "latency_ms": ("max_latency_ms", float(metrics["latency_ms"])),
            "size_bytes": ("max_size_bytes", float(metrics["sparse_bytes"])),
        }
        for name, (key, value) in limits.items():
            if key in self.cfg.constraints:
                excess = value - float(self.cfg.constraints[key])
                trial.set_constraint(name, excess)
                feasible = feasible and excess <= 0
        trial.set_user_attr("feasible", feasible)
        return tuple(float(metrics[OBJECTIVES[o][0]]) for o in self.cfg.objectives)


def _latency_cache_path(cfg: SearchConfig) -> Path | None:
    """Where measured latencies are kept (``latency_cache`` in the config).

    ``shared`` (default): one file per machine next to a SQLite study (else in the autoprune
    cache folder), shared by every study there, so an architecture measured once is never
    measured again on this machine, and a rerun with the same seed sees the same latencies
    and so suggests the same schedules. ``study``: one file per study (fresh numbers for each
    study). ``off``: measure every trial. Anything else is the path of the SQLite file.
    """
    from autoprune.tasks._digits import cache_dir

    host = socket.gethostname()
    choice = cfg.latency_cache.strip()
    if choice == "off":
        return None
    if choice not in ("shared", "study"):
        path = Path(choice).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    if cfg.storage.startswith("sqlite:///"):
        folder = Path(cfg.storage[len("sqlite:///") :]).parent
    else:
        folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if choice == "study":
        return folder / f"{cfg.study_name}.latency-{host}.sqlite"
    return folder / f"latency-{host}.sqlite"


# ---------------------------------------------------------------------------- workers
def _build_task(cfg: SearchConfig) -> Task:
    return get_task(cfg.task, **cfg.task_options)


def run_worker(
    cfg_data: dict[str, Any], n_trials: int, worker: int, threads: int, ready_dir: str | None = None
) -> int:
    """Run ``n_trials`` trials of the study in this process (joblib calls this in workers).

    ``ready_dir``: where this worker says its start-up imports are done (see
    :class:`_StartupCover`)."""
    if ready_dir is not None:
        Path(ready_dir, str(worker)).touch()
    torch.set_num_threads(max(1, threads))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = SearchConfig.from_dict(cfg_data, source="worker")
    _HOLD.acquire()  # starting up (building the task) is busy work too
    try:
        task = _build_task(cfg)
        SearchSpace(prunable_layers(task.model, task.example_inputs), cfg.space)
    finally:
        _HOLD.release()
    study = open_study(cfg, seed_offset=worker)  # may wait for the study's creator: not busy
    return _optimize(study, task, cfg, n_trials)


def _optimize(
    study: optuna.Study, task: Task, cfg: SearchConfig, n_trials: int, callbacks: list[Any] | None = None
) -> int:
    if n_trials <= 0:
        return 0
    _HOLD.acquire()  # the preflight in _Objective traces the model: busy work, like training
    try:
        objective = _Objective(task, cfg, study)
    finally:
        _HOLD.release()
    handle = _install_training_gate()
    duplicates: list[int] = []

    def note_duplicate(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if _DUPLICATE in str(trial.user_attrs.get("error", "")):
            duplicates.append(trial.number)

    try:
        remaining = n_trials
        while remaining > 0:
            # a duplicate unpruned trial popped from the queue is not one of the n trials asked
            duplicates.clear()
            study.optimize(
                objective,
                n_trials=remaining,
                catch=(Exception,),
                gc_after_trial=False,
                callbacks=[*(callbacks or []), note_duplicate],
            )
            remaining = len(duplicates)
    finally:
        handle.remove()
        _HOLD.release()
    return n_trials


def _stop_idle_workers() -> None:
    """Shut down joblib's reusable loky executor, if there is one, and wait for its workers
    to exit (``get_reusable_executor()`` would first resize or create one)."""
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:  # pragma: no cover - joblib without loky
        return
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


@contextlib.contextmanager
def _not_busy() -> Iterator[None]:
    """Let go of this worker's busy hold for a while (around its own latency measurement)."""
    _HOLD.release()
    try:
        yield
    finally:
        _HOLD.acquire()


class _StartupCover:
    """Holds the machine's busy gate for joblib workers while they start.

    A new worker process imports torch and autoprune before any code of ours runs in it: a
    few seconds of full CPU that the worker cannot yet mark as busy itself. A worker that
    started faster would otherwise measure latency right through them. The parent holds the
    shared side of the gate until every worker has said it is past its imports (a file in
    ``ready_dir``), or ``timeout`` seconds (a worker that failed to start)."""

    def __init__(self, workers: int, timeout: float = 300.0) -> None:
        import shutil
        import tempfile

        from autoprune.evaluation import training_gate

        self._rmtree = shutil.rmtree
        self.ready_dir = tempfile.mkdtemp(prefix="autoprune-workers-")
        self._gate: Any = training_gate()  # waits for a measurement already running
        self._gate.__enter__()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(workers, timeout), daemon=True)
        self._thread.start()

    def _watch(self, workers: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            if len(os.listdir(self.ready_dir)) >= workers:
                break
            self._stop.wait(0.1)
        self._release()

    def _release(self) -> None:
        with self._guard:
            if self._gate is not None:
                self._gate.__exit__(None, None, None)
                self._gate = None

    @property
    def holding(self) -> bool:
        return self._gate is not None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._rmtree(self.ready_dir, ignore_errors=True)


class _BusyHold:
    """While this worker computes (pruning, fine-tuning, evaluating accuracy) it holds the
    machine's shared "busy" lock, so another worker's latency measurement waits until this
    worker reaches an optimiser step, and this worker waits at that step until the
    measurement is over. It lets go around its own latency measurement."""

    def __init__(self) -> None:
        self._held: Any = None

    def acquire(self) -> None:
        from autoprune.evaluation import training_gate

        if self._held is None:
            gate = training_gate()  # waits while a measurement runs
            gate.__enter__()
            self._held = gate

    def release(self) -> None:
        if self._held is not None:
            self._held.__exit__(None, None, None)
            self._held = None

    def step_boundary(self) -> None:
        if self._held is not None:
            self.release()
            self.acquire()


_HOLD = _BusyHold()


def _install_training_gate() -> Any:
    """Let a pending measurement in at every optimiser step of this process."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        _HOLD.step_boundary()

    return register_optimizer_step_pre_hook(hook)


# ---------------------------------------------------------------------------- orchestration
_DUPLICATE = "duplicate unpruned reference"
_BASELINE_KEYS = (
    "accuracy", "params", "nonzero_params", "dense_bytes", "sparse_bytes", "macs", "latency_ms", "latency_spread"
)
_WAIT_S = 900.0


def _wait_for_baseline(study: optuna.Study) -> dict[str, Any]:
    """The unpruned model's metrics, waiting while another worker is still measuring them."""
    deadline = time.monotonic() + _WAIT_S
    while True:
        baseline = study.user_attrs.get("baseline")  # a fresh read from the storage
        if baseline is not None:
            return dict(baseline)
        if time.monotonic() > deadline:
            raise AutopruneError(f"no baseline after {_WAIT_S:.0f} s: the unpruned model was not evaluated")
        time.sleep(1.0)


def _ensure_references(study: optuna.Study, task: Task, cfg: SearchConfig) -> int:
    """Evaluate the unpruned model first: accuracy drops and speedups are measured against it.
    The worker that evaluates it also enqueues the uniform warm-start schedules. Workers that
    start while another one evaluates it wait for the baseline. Returns how many other
    trials ran here (another worker may pop the unpruned trial first; ours is then a search
    trial, and it counts toward this worker's share)."""

    def unpruned(*states: optuna.trial.TrialState) -> list[optuna.trial.FrozenTrial]:
        return [t for t in study.get_trials(deepcopy=False, states=states) if t.user_attrs.get("role") == ROLE_UNPRUNED]

    S = optuna.trial.TrialState
    if "baseline" in study.user_attrs:
        return 0
    if not unpruned(S.WAITING, S.RUNNING, S.COMPLETE):
        # The creator enqueued it with the study; it is missing only when it failed before
        # (resuming after that) or the study predates it.
        space = SearchSpace(prunable_layers(task.model, task.example_inputs), cfg.space)
        study.enqueue_trial(space.uniform_params(0.0), user_attrs={"role": ROLE_UNPRUNED})
    ran: list[optuna.trial.FrozenTrial] = []
    if unpruned(S.WAITING):
        # pops the oldest waiting trial: the unpruned one, unless another worker was faster
        _optimize(study, task, cfg, 1, callbacks=[lambda _study, trial: ran.append(trial)])
    if "baseline" not in study.user_attrs and not unpruned(S.RUNNING):
        errors = [t.user_attrs.get("error") for t in unpruned(S.FAIL) if t.user_attrs.get("error")]
        raise AutopruneError(f"evaluating the unpruned model failed: {errors[-1] if errors else 'unknown error'}")
    _wait_for_baseline(study)
    return sum(t.user_attrs.get("role") != ROLE_UNPRUNED for t in ran)


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
    ``sampler``, ``seed``, ``target``, ``constraints``, ``space``...).

    Example:
        >>> import autoprune as ap
        >>> study = ap.search("digits", objectives=["accuracy", "latency"], n_trials=20,
        ...                   storage="sqlite:///studies/demo.db", study_name="demo")  # doctest: +SKIP
    """
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
        task_opts = {k: v for k, v in task.spec.items() if k != "name"}
        overrides["task_options"] = task_opts
    cfg = base.merged(**overrides)
    task_obj = task if isinstance(task, Task) else _build_task(cfg)
    if cfg.workers > 1 and not task_obj.spec.get("name"):
        raise ConfigError("workers > 1 needs a task that workers can rebuild: a built-in name or 'module:factory'")
    return run_search(cfg, task_obj, progress=progress)


def run_search(cfg: SearchConfig, task: Task, *, progress: bool = False) -> optuna.Study:
    """Run (or resume) the search described by ``cfg`` on ``task``."""
    space = SearchSpace(prunable_layers(task.model, task.example_inputs), cfg.space)

    def enqueue_unpruned(new_study: optuna.Study) -> None:
        new_study.enqueue_trial(space.uniform_params(0.0), user_attrs={"role": ROLE_UNPRUNED})

    study = open_study(cfg, on_create=enqueue_unpruned)
    _fail_interrupted_leftovers(study, cfg)
    extra = _ensure_references(study, task, cfg)
    if cfg.worker_trials is not None:
        missing = max(0, cfg.worker_trials - extra)
    else:
        missing = max(0, cfg.trials - len(counted_trials(study)))
    if missing == 0:
        return study
    monitor = _Progress(study, cfg, missing) if progress else None
    try:
        if cfg.workers > 1:
            # Enqueued trials run here first: SQLite has no SELECT ... FOR UPDATE, so two
            # processes could pop the same waiting trial.
            waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
            first = min(waiting, missing)
            _optimize(study, task, cfg, first)
            missing -= first
        if cfg.workers == 1 or missing <= 1:
            _optimize(study, task, cfg, missing)
        else:
            from joblib import Parallel, delayed

            workers = min(cfg.workers, missing)
            shares = [missing // workers + (i < missing % workers) for i in range(workers)]
            threads = max(1, (os.cpu_count() or 1) // workers)
            data = cfg.to_dict(mask=False)
            cover = _StartupCover(workers)
            try:
                Parallel(n_jobs=workers, backend="loky")(
                    delayed(run_worker)(data, share, i + 1, threads, cover.ready_dir)
                    for i, share in enumerate(shares)
                )
            finally:
                cover.close()
                # joblib keeps idle workers for the next call; a later search with another
                # worker count would replace them, and their exit (freeing torch) would run
                # unguarded through the new workers' measurements. Stop them now, while
                # nothing measures.
                _stop_idle_workers()
    finally:
        if monitor is not None:
            monitor.close()
    return study


class _Progress:
    """A tqdm bar fed by polling the storage (works for in-process and joblib workers)."""

    def __init__(self, study: optuna.Study, cfg: SearchConfig, total: int) -> None:
        from tqdm.auto import tqdm

        self.study = study
        self.cfg = cfg
        self.start = len(counted_trials(study))
        self.bar = tqdm(total=total, unit="trial", desc=f"search {cfg.study_name}", dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self.update()

    def update(self) -> None:
        try:
            trials = counted_trials(self.study)
        except Exception:  # noqa: BLE001 - a busy database must not kill the bar
            return
        self.bar.n = min(self.bar.total, len(trials) - self.start)
        self.bar.set_postfix_str(_best_feasible_text(trials, self.cfg), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.update()
        self.bar.close()


def _best_feasible_text(trials: list[optuna.trial.FrozenTrial], cfg: SearchConfig) -> str:
    ok = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and is_feasible(t)]
    if not ok:
        return "no feasible trial yet"
    best = max(ok, key=lambda t: float(t.user_attrs.get("speedup", 0.0)))
    return (
        f"best feasible: #{best.number} {best.user_attrs.get('speedup', 0):.2f}x faster, "
        f"{best.user_attrs.get('compression', 0):.1f}x smaller, drop {best.user_attrs.get('accuracy_drop', 0):.2f}"
    )
