"""Study configuration: typed defaults, TOML loading, validation and masking of secrets.

Precedence is defaults < study TOML < command-line flags. The resolved config is saved in
the study (``user_attrs["config"]``) so a run can be repeated and workers can join it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune._errors import ConfigError
from autoprune.evaluation import Target
from autoprune.schedule import IMPORTANCES, METHODS, SHAPES

__all__ = [
    "SpaceConfig",
    "SearchConfig",
    "load_toml",
    "mask_url",
    "DEFAULT_STORAGE",
    "driver_url",
    "SAMPLERS",
    "GRANULARITIES",
    "PARAMETRIZATIONS",
    "IDENTITY_KEYS",
    "LATENCY_CACHES",
    "OBJECTIVES",
    "POPULATION_SAMPLERS",
]

DEFAULT_STORAGE = "sqlite:///studies/autoprune.db"
SAMPLERS = ("nsga2", "nsga3", "tpe", "random", "qmc", "gp")
GRANULARITIES = ("layer", "block", "global")
# What the sensitivity references spread pruning by: accuracy lost per latency saved (the scan timed on
# the target; only when latency is an objective) or per MACs saved (no timing)
SENSITIVITY_RESOURCES = ("latency", "macs")
# unit: an amount (and method) per unit; sensitivity: a uniform level, blended (spread) toward
# the sensitivity allocation that saves the same MACs, plus a small offset per unit
# (structured only; needs the study's sensitivity scan)
PARAMETRIZATIONS = ("unit", "sensitivity")
# Keys that define what a study *is*: what its trials are, how each was measured and how
# they were chosen. A run that resumes or joins a study must agree on them, or its trials
# would not be comparable with the stored ones (another batch, thread count or backend
# times another model; another budget or tolerance another interval; another sampler,
# seed, screening or neighbour share is another search).
IDENTITY_KEYS = (
    "task",
    "task_options",
    "objectives",
    "constraints",
    "space",
    "reference_amounts",
    "target",
    "latency_budget_s",
    "latency_rel_tol",
    "sampler",
    "population_size",
    "seed",
    "screening",
    "screen_fraction",
    "screen_margin",
    "screen_window",
    "neighbour_share",
)
# Samplers that take a population size.
POPULATION_SAMPLERS = ("nsga2", "nsga3")
# What latency_cache names besides the path of a SQLite file.
LATENCY_CACHES = ("shared", "study", "off")
_SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
# Objective name -> (the trial user_attr it reads, direction); autoprune.study.keys re-exports it.
OBJECTIVES: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy", "maximize"),
    "latency": ("latency_ms", "minimize"),
    "size": ("sparse_bytes", "minimize"),
    "params": ("nonzero_params", "minimize"),
    "macs": ("macs", "minimize"),
}


def mask_url(url: str) -> str:
    """Hide the password of a database URL: ``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``."""
    return re.sub(r"(?<=://)([^:/@]+):([^@]*)@", r"\1:***@", url)


def driver_url(url: str) -> str:
    """The URL SQLAlchemy should open: a bare file path is a SQLite file, and a plain
    ``postgresql://`` URL uses whichever PostgreSQL driver is installed (SQLAlchemy's default,
    psycopg 3, or else psycopg2 from ``pip install autoprune[postgres]``)."""
    import importlib.util

    if "://" not in url:
        return f"sqlite:///{url}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
        if importlib.util.find_spec("psycopg") is None:
            raise ConfigError(
                f"storage {mask_url(url)!r} needs a PostgreSQL driver: pip install psycopg2-binary "
                "(or autoprune[postgres])"
            )
        return f"postgresql://{rest}"
    return url


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"invalid {key} = {value!r}; allowed: {allowed}")


@dataclass
class SpaceConfig:
    """What the search may choose. Lists are the choices; a single value fixes it."""

    granularity: str = "layer"
    block_depth: int | None = None
    methods: list[str] = field(default_factory=lambda: ["structured", "unstructured", "none"])
    max_amount: float = 0.9
    amount_step: float = 0.05
    steps: list[int] = field(default_factory=lambda: [1, 3])
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    fine_tune_steps: list[int] = field(default_factory=lambda: [100])
    importance: list[str] = field(default_factory=lambda: ["magnitude", "lamp"])
    norms: list[int] = field(default_factory=lambda: [1, 2])
    global_unstructured: list[bool] = field(default_factory=lambda: [False, True])
    round_to: int | list[int] | None = field(default_factory=lambda: [1, 8])
    attention_heads: list[bool] = field(default_factory=lambda: [False, True])
    distill: list[bool] = field(default_factory=lambda: [False])
    fine_tune_per_trial: bool = True
    ignore: list[str] = field(default_factory=list)
    parametrization: str = "unit"
    offset_range: float = 0.1

    @property
    def round_to_choices(self) -> list[int]:
        """``round_to`` as choices (1 = channel counts are not rounded)."""
        if self.round_to is None:
            return [1]
        return list(self.round_to) if isinstance(self.round_to, list) else [self.round_to]

    def validate(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise _fail("space.granularity", self.granularity, ", ".join(GRANULARITIES))
        if self.block_depth is not None and (not _int(self.block_depth) or self.block_depth < 1):
            raise _fail("space.block_depth", self.block_depth, "an integer >= 1")
        if not self.methods or any(m not in METHODS for m in self.methods):
            raise _fail("space.methods", self.methods, f"a non-empty subset of {list(METHODS)}")
        if not _num(self.max_amount) or not 0 < self.max_amount < 1:
            raise _fail("space.max_amount", self.max_amount, "a number with 0 < max_amount < 1")
        if not _num(self.amount_step) or not 0 < self.amount_step <= self.max_amount:
            raise _fail("space.amount_step", self.amount_step, "a number with 0 < amount_step <= max_amount")
        if (
            not isinstance(self.steps, list)
            or len(self.steps) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.steps)
            or not 1 <= self.steps[0] <= self.steps[1] <= 10
        ):
            raise _fail("space.steps", self.steps, "[min, max] with 1 <= min <= max <= 10")
        if not self.shapes or any(s not in SHAPES for s in self.shapes):
            raise _fail("space.shapes", self.shapes, f"a non-empty subset of {list(SHAPES)}")
        # true/false are not step counts, though Python counts them as the integers 1 and 0
        if not self.fine_tune_steps or any(not _int(s) or s < 0 for s in self.fine_tune_steps):
            raise _fail("space.fine_tune_steps", self.fine_tune_steps, "a non-empty list of integers >= 0 (not true/false)")
        if not self.importance or any(i not in IMPORTANCES for i in self.importance):
            raise _fail("space.importance", self.importance, f"a non-empty subset of {list(IMPORTANCES)}")
        if not self.norms or any(not _int(n) or n not in (1, 2) for n in self.norms):
            raise _fail("space.norms", self.norms, "a non-empty subset of [1, 2]")
        if not self.attention_heads or any(not isinstance(g, bool) for g in self.attention_heads):
            raise _fail("space.attention_heads", self.attention_heads, "a non-empty subset of [false, true]")
        if not self.global_unstructured or any(not isinstance(g, bool) for g in self.global_unstructured):
            raise _fail("space.global_unstructured", self.global_unstructured, "a non-empty subset of [false, true]")
        values = self.round_to if isinstance(self.round_to, list) else [self.round_to]
        if self.round_to is not None and (
            not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values)
        ):
            raise _fail(
                "space.round_to", self.round_to, "an integer >= 1, or a list of them to search over (1 = no rounding)"
            )
        if not isinstance(self.ignore, list) or not all(isinstance(i, str) for i in self.ignore):
            raise _fail("space.ignore", self.ignore, "a list of layer paths")
        if not isinstance(self.fine_tune_per_trial, bool):
            raise _fail("space.fine_tune_per_trial", self.fine_tune_per_trial, "true or false")
        if not self.distill or any(not isinstance(d, bool) for d in self.distill):
            raise _fail("space.distill", self.distill, "a non-empty subset of [false, true]")
        if self.parametrization not in PARAMETRIZATIONS:
            raise _fail("space.parametrization", self.parametrization, ", ".join(PARAMETRIZATIONS))
        if not _num(self.offset_range) or not 0 <= self.offset_range < 1:
            raise _fail("space.offset_range", self.offset_range, "a number with 0 <= offset_range < 1 (0: no offsets)")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    """An integer that is not a bool (``True`` is an ``int`` to Python, not to a user)."""
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class SearchConfig:
    """Everything a search needs; see ``studies/digits.toml`` for every option explained."""

    study: str | None = None
    task: str = "digits"
    task_options: dict[str, Any] = field(default_factory=dict)
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "latency"])
    constraints: dict[str, float] = field(default_factory=lambda: {"max_accuracy_drop": 1.0})
    trials: int = 40
    workers: int = 1
    worker_trials: int | None = None
    sampler: str = "tpe"
    population_size: int | None = None
    seed: int = 0
    target: str = "cpu"
    storage: str = DEFAULT_STORAGE
    reference_amounts: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9])
    sensitivity: bool = True
    sensitivity_amounts: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    sensitivity_targets: list[float] = field(default_factory=lambda: [0.5, 0.75, 0.9, 0.95])
    global_reference_amounts: list[float] = field(default_factory=list)
    sensitivity_resource: str = "latency"
    reference_refinements: int = 2
    neighbour_share: float = 0.5
    screening: bool = True
    screen_fraction: float = 0.2
    screen_margin: float = 0.5
    screen_window: int = 10
    front_tolerance: float = 0.5
    drop_noise_se: float = 1.0
    latency_budget_s: float = 2.0
    latency_rel_tol: float = 0.02
    latency_cache: str = "shared"
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    retries: int = 1
    report: bool = True
    space: SpaceConfig = field(default_factory=SpaceConfig)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> SearchConfig:
        data = _renamed(dict(data), source)
        data.pop("early_reject_margin", None)  # studies made before screening replaced early rejection
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {source}; allowed: {sorted(known)}")
        space = data.pop("space", {})
        if isinstance(space, SpaceConfig):
            space = dataclasses.asdict(space)
        if not isinstance(space, dict):
            raise _fail("space", space, "a table of options")
        space_known = {f.name for f in dataclasses.fields(SpaceConfig)}
        bad = sorted(set(space) - space_known)
        if bad:
            raise ConfigError(f"unknown key(s) {bad} in [space] of {source}; allowed: {sorted(space_known)}")
        space = dict(space)
        for key in ("methods", "shapes", "importance", "norms", "global_unstructured", "fine_tune_steps", "attention_heads", "distill"):
            if key in space and not isinstance(space[key], list):
                space[key] = [space[key]]  # a single value fixes the choice
        if "steps" in space and isinstance(space["steps"], int):
            space["steps"] = [space["steps"], space["steps"]]
        try:
            cfg = cls(**data, space=SpaceConfig(**space))
        except TypeError as exc:
            raise ConfigError(f"bad {source}: {exc}") from None
        cfg.validate()
        return cfg

    @classmethod
    def from_stored(cls, data: dict[str, Any], *, storage: str, source: str = "stored config") -> SearchConfig:
        """The config a study stored (``user_attrs["config"]``, its storage URL masked), read
        with ``storage`` as its storage.

        Values that earlier versions accepted but ignored or read loosely are read as what
        they did, so a study stored by them still resumes and joins (the stored attribute
        is not changed): a ``population_size`` with a sampler that has none (ignored), a
        ``latency_cache`` name that was taken as a file in the working folder, true/false
        fine-tune steps (1 and 0 steps)."""
        data = dict(data)
        data["storage"] = storage
        if data.get("population_size") is not None and data.get("sampler", "tpe") not in POPULATION_SAMPLERS:
            data["population_size"] = None
        cache = data.get("latency_cache")
        if isinstance(cache, str) and cache.strip():
            try:
                _check_latency_cache(cache)
            except ConfigError:
                data["latency_cache"] = "./" + cache.strip()
        space = data.get("space")
        if isinstance(space, dict) and isinstance(space.get("fine_tune_steps"), list):
            steps = [int(s) if isinstance(s, bool) else s for s in space["fine_tune_steps"]]
            data["space"] = {**space, "fine_tune_steps": steps}
        try:
            return cls.from_dict(data, source=source)
        except ConfigError as exc:
            # the user did not write this value: say where it comes from
            raise ConfigError(f"the config stored in {source} is refused: {exc}") from None

    def merged(self, **overrides: Any) -> SearchConfig:
        """A copy with the given (non-None) values replaced, validated."""
        data = self.to_dict(mask=False)
        overrides = _renamed(dict(overrides), "command line")
        for key, value in overrides.items():
            if value is not None:
                data[key] = value
        return SearchConfig.from_dict(data, source="command line")

    def to_dict(self, *, mask: bool = True) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if mask:
            data["storage"] = mask_url(self.storage)
        return data

    def identity(self) -> dict[str, Any]:
        data = self.to_dict()
        return {k: data[k] for k in IDENTITY_KEYS}

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        if self.study is not None and (not isinstance(self.study, str) or not re.fullmatch(r"[\w.\-]+", self.study)):
            raise _fail("study", self.study, "letters, digits, '_', '-' and '.'")
        if not isinstance(self.task, str) or not self.task:
            raise _fail("task", self.task, "a built-in task name or 'package.module:factory'")
        if not isinstance(self.task_options, dict):
            raise _fail("task_options", self.task_options, "a table of keyword arguments for the task factory")
        if not isinstance(self.objectives, list) or not 2 <= len(self.objectives) <= 3:
            raise _fail("objectives", self.objectives, f"2 or 3 of {list(OBJECTIVES)}")
        for name in self.objectives:
            if name not in OBJECTIVES:
                raise _fail("objective", name, ", ".join(OBJECTIVES))
        if len(set(self.objectives)) != len(self.objectives):
            raise _fail("objectives", self.objectives, "each objective at most once")
        if {"size", "params"} <= set(self.objectives):
            raise _fail("objectives", self.objectives, "either size or params, not both")
        allowed_c = ("max_accuracy_drop", "max_latency_ms", "max_size_bytes")
        if not isinstance(self.constraints, dict):
            raise _fail("constraints", self.constraints, f"a table with keys {allowed_c}")
        for key, value in self.constraints.items():
            if key not in allowed_c:
                raise _fail("constraint", key, ", ".join(allowed_c))
            if not _num(value) or value < 0:
                raise _fail(f"constraints.{key}", value, "a number >= 0")
            if key != "max_accuracy_drop" and value == 0:
                # no model runs in 0 ms or fits in 0 bytes: every trial would be infeasible
                raise _fail(f"constraints.{key}", value, "a number > 0 (0 makes every trial infeasible)")
        for key, lo in (("trials", 1), ("workers", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise _fail(key, value, f"an integer >= {lo}")
        if self.worker_trials is not None and (not _int(self.worker_trials) or self.worker_trials < 1):
            raise _fail("worker_trials", self.worker_trials, "an integer >= 1")
        if self.sampler not in SAMPLERS:
            raise _fail("sampler", self.sampler, ", ".join(SAMPLERS))
        if self.population_size is not None and (not _int(self.population_size) or self.population_size < 2):
            raise _fail("population_size", self.population_size, "an integer >= 2")
        if self.population_size is not None and self.sampler not in POPULATION_SAMPLERS:
            raise _fail(
                "population_size",
                self.population_size,
                f"only with sampler {' or '.join(map(repr, POPULATION_SAMPLERS))} (sampler is {self.sampler!r}, "
                "which has no population; leave population_size out)",
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise _fail("seed", self.seed, "an integer")
        if not isinstance(self.storage, str) or "://" not in self.storage:
            raise _fail("storage", mask_url(str(self.storage)), "an Optuna storage URL such as sqlite:///studies/autoprune.db")
        if not isinstance(self.reference_amounts, list) or any(
            not _num(a) or not 0 < a < 1 for a in self.reference_amounts
        ):
            raise _fail("reference_amounts", self.reference_amounts, "a list of numbers in (0, 1)")
        for key in ("sensitivity_amounts", "sensitivity_targets", "global_reference_amounts"):
            values = getattr(self, key)
            if not isinstance(values, list) or any(not _num(a) or not 0 < a < 1 for a in values):
                raise _fail(key, values, "a list of numbers in (0, 1)")
        if self.sensitivity is True and not self.sensitivity_amounts:
            # refused here, not after the unpruned model was measured: the scan needs amounts
            raise _fail(
                "sensitivity_amounts", self.sensitivity_amounts, "a non-empty list of numbers in (0, 1) while sensitivity = true"
            )
        if self.sensitivity_resource not in SENSITIVITY_RESOURCES:
            raise _fail(
                "sensitivity_resource",
                self.sensitivity_resource,
                f"one of {list(SENSITIVITY_RESOURCES)} ('latency' times the scan when latency is an objective)",
            )
        r = self.reference_refinements
        if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= 10:
            raise _fail("reference_refinements", r, "an integer from 0 to 10 (0: none)")
        if not _num(self.neighbour_share) or not 0 <= self.neighbour_share < 1:
            raise _fail("neighbour_share", self.neighbour_share, "a number with 0 <= neighbour_share < 1 (0: TPE only)")
        for key in ("sensitivity", "screening"):
            if not isinstance(getattr(self, key), bool):
                raise _fail(key, getattr(self, key), "true or false")
        if self.space.parametrization == "sensitivity" and not self.sensitivity:
            raise _fail("sensitivity", self.sensitivity, "true with space.parametrization = 'sensitivity' (it needs the scan)")
        if not _num(self.screen_fraction) or not 0 < self.screen_fraction < 1:
            raise _fail("screen_fraction", self.screen_fraction, "a number in (0, 1)")
        if not _num(self.screen_margin) or self.screen_margin < 0:
            raise _fail("screen_margin", self.screen_margin, "a number of points >= 0")
        w = self.screen_window
        if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 1000:
            raise _fail("screen_window", w, "an integer from 0 to 1000 (0: screen every search trial)")
        if not _num(self.front_tolerance) or self.front_tolerance < 0:
            raise _fail("front_tolerance", self.front_tolerance, "a number of points >= 0 (0: the strict Pareto front)")
        if not _num(self.drop_noise_se) or not 0 <= self.drop_noise_se <= 5:
            raise _fail(
                "drop_noise_se", self.drop_noise_se, "a number of standard errors from 0 to 5 (0: no trial over the limit is shown)"
            )
        if not _num(self.latency_rel_tol) or not 0 < self.latency_rel_tol < 1:
            raise _fail("latency_rel_tol", self.latency_rel_tol, "a number in (0, 1)")
        if not _num(self.latency_budget_s) or not 0 < self.latency_budget_s <= 60:
            raise _fail("latency_budget_s", self.latency_budget_s, "a number of seconds in (0, 60]")
        _check_latency_cache(self.latency_cache)
        for key in ("heartbeat_interval", "grace_period"):
            value = getattr(self, key)
            if value is not None and (not _int(value) or value < 1):
                raise _fail(key, value, "an integer number of seconds >= 1")
        if not _int(self.retries) or self.retries < 0:
            raise _fail("retries", self.retries, "an integer >= 0")
        if not isinstance(self.report, bool):
            raise _fail("report", self.report, "true or false")
        Target.parse(self.target)
        self.space.validate()

    @property
    def study_name(self) -> str:
        return self.study or re.sub(r"[^\w.\-]+", "_", self.task.split(":")[-1])


def _check_latency_cache(value: Any) -> None:
    """``latency_cache``: one of :data:`LATENCY_CACHES`, or a path that says it is one (a
    folder in it, or a SQLite suffix), so a misspelt choice is an error, not a new file."""
    allowed = "'shared', 'study', 'off' or the path of a SQLite file (with a '/' or ending in .sqlite or .db)"
    if not isinstance(value, str) or not value.strip():
        raise _fail("latency_cache", value, allowed)
    choice = value.strip()
    if choice in LATENCY_CACHES or "/" in choice or os.sep in choice or choice.lower().endswith(_SQLITE_SUFFIXES):
        return
    import difflib

    close = difflib.get_close_matches(choice.lower(), LATENCY_CACHES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise _fail("latency_cache", value, allowed + hint)


# Keys renamed since a study could store them: old name -> new name. Both read; not both at once.
RENAMED_KEYS = {"warm_start_targets": "sensitivity_targets"}


def _renamed(data: dict[str, Any], source: str) -> dict[str, Any]:
    for old, new in RENAMED_KEYS.items():
        if old in data:
            if data.get(new) is not None and data.get(old) is not None:
                raise ConfigError(f"`{old}` is the older name of `{new}`; give `{new}` only (in {source})")
            value = data.pop(old)
            if data.get(new) is None:
                data[new] = value
    return data


def load_toml(path: str | os.PathLike[str]) -> SearchConfig:
    """Load a study config from TOML (unknown keys and bad values are errors)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"study config {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"study config {str(p)!r} is not valid TOML: {exc}") from None
    return SearchConfig.from_dict(data, source=str(p))
