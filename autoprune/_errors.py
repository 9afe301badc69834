"""The exception hierarchy: one root, specific subclasses (as Optuna does)."""

from __future__ import annotations

__all__ = [
    "AutopruneError",
    "ScheduleError",
    "PreflightError",
    "TaskError",
    "ConfigError",
    "TargetError",
    "StudyNotFoundError",
    "NoQualifyingTrialError",
    "ExportError",
    "ArchitectureMismatchError",
    "UnsafeWeightsError",
]


class AutopruneError(Exception):
    """Root of every error autoprune raises on purpose."""


class ScheduleError(AutopruneError, ValueError):
    """A Schedule breaks a rule (the message names the rule, the layer and the value)."""


class PreflightError(AutopruneError):
    """A model cannot be analysed for pruning (for example, it cannot be traced)."""


class TaskError(AutopruneError):
    """A task cannot be found or loaded."""


class ConfigError(AutopruneError, ValueError):
    """A study config or a command-line value is invalid."""


class TargetError(AutopruneError, ValueError):
    """A latency target is invalid or not available on this machine."""


class StudyNotFoundError(AutopruneError, LookupError):
    """No study of that name in the storage (the message lists the names present)."""


class NoQualifyingTrialError(AutopruneError, LookupError):
    """No trial meets a pick rule (the message names the rule and the best value available)."""


class ExportError(AutopruneError):
    """A pruned model cannot be saved or loaded (missing file, bad file, missing package)."""


class ArchitectureMismatchError(ExportError):
    """Saved weights do not fit the rebuilt architecture (the message names the first tensor)."""


class UnsafeWeightsError(ExportError):
    """The weights file holds more than tensors (a pickled object); it is refused, not run."""
