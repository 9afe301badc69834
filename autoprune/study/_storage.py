"""Storage and joining: open the Optuna storage, create or join a study, count its trials.

A study is created once, by whichever process comes first; every other process (a joblib
worker, a worker on another machine) joins it and must agree on its identity (task,
objectives, constraints, space). The creator writes the config last, so a joiner that sees
it sees a complete study.
"""

from __future__ import annotations

import json
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from autoprune import __version__
from autoprune._errors import AutopruneError, ConfigError
from autoprune._paths import cache_dir, sqlite_path
from autoprune.config import SearchConfig, driver_url, mask_url
from autoprune.evaluation import Target
from autoprune.study.keys import FIDELITY_REPEAT, OBJECTIVES, ROLE_UNPRUNED

__all__ = [
    "check_joinable",
    "counted_trials",
    "effective_heartbeat",
    "fail_interrupted_leftovers",
    "first_line",
    "latency_cache_path",
    "make_storage",
    "create_or_join_study",
    "stored_config",
]

_DONE_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
_CONFIG_WAIT_S = 60.0


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def make_storage(cfg: SearchConfig) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage for ``cfg.storage`` (SQLite folders are created)."""
    url = driver_url(cfg.storage)
    db = sqlite_path(url)
    folder = db.parent if db is not None else None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(
                f"cannot create the folder of storage {mask_url(url)!r}: {str(folder)!r} or a folder above it "
                "is a file; give a path whose folders are folders"
            ) from None
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
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
            raise ConfigError(f"cannot open storage {mask_url(url)!r}: {first_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - bad URL, server down, or a race (below)
            # Workers starting at once on an empty database race to create Optuna's tables;
            # the losers see "already exists" errors and succeed on a second try.
            if attempt == 2:
                raise ConfigError(
                    f"cannot open storage {mask_url(url)!r}: {type(exc).__name__}: {first_line(exc)}"
                ) from None
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def effective_heartbeat(cfg: SearchConfig) -> int | None:
    """Heartbeats are on by default for server databases (workers on many machines), off
    for SQLite (one machine: a resumed run cleans up after a stopped one)."""
    if cfg.heartbeat_interval:
        return cfg.heartbeat_interval
    return None if cfg.storage.startswith("sqlite") else 10


def _make_sampler(cfg: SearchConfig, seed: int, trials: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler of ``cfg``. ``trials``: the trial budget its defaults are sized by (the
    study's first one: a resume that asks for more trials keeps the population and the
    startup trials the study began with)."""
    trials = cfg.trials if trials is None else trials
    if cfg.sampler in ("nsga2", "nsga3"):
        pop = cfg.population_size or max(8, min(50, trials // 4))
        nsga = optuna.samplers.NSGAIISampler if cfg.sampler == "nsga2" else optuna.samplers.NSGAIIISampler
        return nsga(seed=seed, population_size=pop)
    if cfg.sampler == "tpe":
        # constant_liar: trials other workers are still running count as bad results while a
        # worker samples, so parallel workers spread out instead of sampling the same region;
        # a one-worker run never has another running trial, so it samples exactly as without
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(5, min(10, trials // 4)), constant_liar=True
        )
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return optuna.samplers.GPSampler(seed=seed)


def create_or_join_study(
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
    study = _join(cfg, storage, sampler=sampler, check=check)
    done = len(study.get_trials(deepcopy=False))
    # The sampler's defaults (NSGA's population, TPE's startup trials) are sized by the trial
    # budget the study was created with: a resume that asks for more keeps them.
    stored = study.user_attrs.get("config")
    first = stored.get("trials") if isinstance(stored, dict) else None
    sized_by = first if isinstance(first, int) and not isinstance(first, bool) and first >= 1 else None
    if done or (sized_by is not None and sized_by != cfg.trials):
        # Resuming (or joining late): a sampler seeded as at the start would propose the
        # first run's schedules again, which are repeats now. Seeded by the trials so far,
        # it stays reproducible and proposes new ones.
        study.sampler = _make_sampler(cfg, cfg.seed + seed_offset + done, trials=sized_by)
    return study


def check_joinable(cfg: SearchConfig) -> None:
    """Refuse early a run whose settings contradict the existing study it names (nothing
    happens when the study does not exist yet: :func:`run_search` creates it)."""
    storage = make_storage(cfg)
    if cfg.study_name in _study_names(storage):
        _join(cfg, storage)


def _study_names(storage: optuna.storages.BaseStorage) -> set[str]:
    return set(optuna.get_all_study_names(storage))


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
    stored = _wait_for_attr(study, "config", _CONFIG_WAIT_S)
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
    """Refuse a run whose identity settings (:data:`~autoprune.config.IDENTITY_KEYS`)
    differ from the study's, with one line naming the first such setting and both values.

    A setting the stored config lacks (a study made before autoprune stored it) is not
    compared: nothing says what that study used, so resuming it is not refused for that."""
    mine = cfg.identity()
    raw = dict(stored)
    try:
        # Read as this version reads it: options of [space] added since the study was
        # created take their defaults (its stored space lacks them).
        theirs = SearchConfig.from_stored(raw, storage=cfg.storage, source=f"study {name!r}").identity()
    except AutopruneError:
        theirs = raw  # written by a newer (or an older, laxer) autoprune: compare what is there
    for key in mine:
        if key not in raw:
            continue
        if key == "target":
            _check_same_target(str(theirs.get(key)), str(mine[key]), name)
        elif not _same(mine[key], theirs.get(key)):
            setting, old, new = _first_difference(key, theirs.get(key), mine[key])
            raise ConfigError(
                f"study {name!r} was created with {setting} = {old}, but this run asks for {setting} = {new}; "
                f"{_SAME_SETTINGS}"
            )


def _first_difference(key: str, theirs: Any, mine: Any) -> tuple[str, str, str]:
    """The setting that differs, as ``space.fine_tune_steps`` rather than all of ``space``,
    and its two values as JSON (``(not set)`` for a table entry one side lacks)."""
    if isinstance(theirs, dict) and isinstance(mine, dict):
        for sub in sorted(set(theirs) | set(mine)):
            if sub not in theirs or sub not in mine or not _same(theirs[sub], mine[sub]):
                old, new = (json.dumps(t[sub], sort_keys=True) if sub in t else "(not set)" for t in (theirs, mine))
                return f"{key}.{sub}", old, new
    return key, json.dumps(theirs, sort_keys=True), json.dumps(mine, sort_keys=True)


_SAME_SETTINGS = "use the same settings (or just --study/--storage to join), or a new --study name"


def _check_same_target(theirs: str, mine: str, name: str) -> None:
    """Targets are compared as parsed (``cpu:threads=2,batch=8`` is ``cpu:batch=8,threads=2``),
    and the message names the options that differ."""
    try:
        a, b = Target.parse(theirs), Target.parse(mine)
    except AutopruneError:
        if theirs.strip() == mine.strip():
            return
        differ = ""
    else:
        if a == b:
            return
        names = {"batch_size": "batch", "threads": "threads", "dtype": "dtype", "backend": "backend", "device": "device"}
        differ = ", ".join(
            f"{label} {getattr(a, field)} -> {getattr(b, field)}"
            for field, label in names.items()
            if getattr(a, field) != getattr(b, field)
        )
    raise ConfigError(
        f"study {name!r} was created with target = {theirs!r}, but this run asks for target = {mine!r}"
        + (f" ({differ})" if differ else "")
        + f": its trials were timed on another target; {_SAME_SETTINGS}"
    )


def _same(a: Any, b: Any) -> bool:
    """Equal as settings: numbers by value (a TOML ``2`` is the stored ``2.0``), bools only
    equal to bools, containers element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def stored_config(study_name: str, storage_url: str) -> SearchConfig | None:
    """The config saved in an existing study, or None when the study does not exist."""
    storage = make_storage(SearchConfig(storage=storage_url))
    if study_name not in _study_names(storage):
        return None
    study = optuna.load_study(study_name=study_name, storage=storage)
    data = _wait_for_attr(study, "config", _CONFIG_WAIT_S)
    if data is None:
        raise ConfigError(f"study {study_name!r} was not written by autoprune (no saved config)")
    return SearchConfig.from_stored(data, storage=storage_url, source=f"study {study_name!r}")


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward the budget: finished ones, except those cut short by Ctrl-C
    and repeats (``fidelity = repeat``: not run, the outcome of an earlier trial)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=_DONE_STATES)
        if not t.user_attrs.get("interrupted")
        and t.user_attrs.get("role") != ROLE_UNPRUNED
        and t.user_attrs.get("fidelity") != FIDELITY_REPEAT
    ]


def fail_interrupted_leftovers(study: optuna.Study, cfg: SearchConfig) -> None:
    """Without heartbeats nobody else fails a RUNNING trial whose process died (Ctrl-C,
    kill): on resume of a local study, mark them failed and not counted."""
    if effective_heartbeat(cfg):
        return  # Optuna fails stale trials itself (and retries them)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if not running:
        return
    storage = make_storage(cfg)
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in running:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_user_attr(trial_id, "error", "interrupted: left RUNNING by a stopped run")
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)


def latency_cache_path(cfg: SearchConfig) -> Path | None:
    """Where measured latencies are kept (``latency_cache`` in the config).

    ``shared`` (default): one file per machine next to a SQLite study (else in the autoprune
    cache folder), shared by every study there, so an architecture measured once is never
    measured again on this machine, and a rerun with the same seed sees the same latencies
    and so suggests the same schedules. ``study``: one file per study (fresh numbers for each
    study). ``off``: measure every trial. Anything else is the path of the SQLite file.
    """
    host = socket.gethostname()
    choice = cfg.latency_cache.strip()
    if choice == "off":
        return None
    if choice not in ("shared", "study"):
        path = Path(choice).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    db = sqlite_path(cfg.storage)
    folder = db.parent if db is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if choice == "study":
        return folder / f"{cfg.study_name}.latency-{host}.sqlite"
    return folder / f"latency-{host}.sqlite"
