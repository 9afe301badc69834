"""autoprune: AutoML search over pruning schedules for PyTorch models."""

from __future__ import annotations

from autoprune import tasks, zoo
from autoprune._errors import (
    AutopruneError,
    ConfigError,
    PreflightError,
    ScheduleError,
    TargetError,
    TaskError,
)
from autoprune.executor import apply_schedule
from autoprune.preflight import LayerInfo, prunable_layers
from autoprune.schedule import LayerPlan, Schedule, step_amounts
from autoprune.tasks import Task

__version__ = "0.1.0"

__all__ = [
    "AutopruneError",
    "ConfigError",
    "LayerInfo",
    "LayerPlan",
    "PreflightError",
    "Schedule",
    "ScheduleError",
    "TargetError",
    "TaskError",
    "apply_schedule",
    "prunable_layers",
    "step_amounts",
    "Task",
    "tasks",
    "zoo",
]
