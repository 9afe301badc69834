"""The exception hierarchy: one root, specific subclasses (as Optuna does)."""

from __future__ import annotations

__all__ = ["AutopruneError", "ScheduleError", "PreflightError", "TaskError", "ConfigError", "TargetError"]


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
