"""autoprune: AutoML search over pruning schedules for PyTorch models."""

from __future__ import annotations

__version__ = "0.1.0"  # the one place the version is written (pyproject reads it)

from autoprune import lm, tasks
from autoprune._errors import (
    ArchitectureMismatchError,
    AutopruneError,
    ConfigError,
    ExportError,
    NoQualifyingTrialError,
    PreflightError,
    ScheduleError,
    StudyNotFoundError,
    TargetError,
    TaskError,
    UnsafeWeightsError,
)
from autoprune.config import SearchConfig, SpaceConfig
from autoprune.evaluation import Metrics, Speedup, SpeedupMeter, Target, evaluate, measure_speedup
from autoprune.executor import apply_schedule
from autoprune.export import load_pruned, save_pruned
from autoprune.preflight import LayerInfo
from autoprune.prunable import prunable_layers
from autoprune.report import report
from autoprune.schedule import LayerPlan, Schedule, step_amounts
from autoprune.space import uniform_schedule
from autoprune.study import load_study, search
from autoprune.tasks import Task

__all__ = [
    "ArchitectureMismatchError",
    "AutopruneError",
    "ConfigError",
    "ExportError",
    "NoQualifyingTrialError",
    "StudyNotFoundError",
    "UnsafeWeightsError",
    "LayerInfo",
    "LayerPlan",
    "Metrics",
    "PreflightError",
    "Schedule",
    "SearchConfig",
    "SpaceConfig",
    "ScheduleError",
    "Speedup",
    "SpeedupMeter",
    "Target",
    "TargetError",
    "TaskError",
    "apply_schedule",
    "evaluate",
    "load_pruned",
    "load_study",
    "measure_speedup",
    "save_pruned",
    "search",
    "prunable_layers",
    "report",
    "step_amounts",
    "uniform_schedule",
    "Task",
    "lm",
    "tasks",
]
