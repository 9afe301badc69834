"""A trial picked from a study: its Schedule and metrics, and applying it to a model."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoprune._errors import ConfigError, TaskError
from autoprune.executor import apply_schedule
from autoprune.schedule import Schedule
from autoprune.study import keys as study_keys

if TYPE_CHECKING:
    from torch import nn

    from autoprune.tasks import Task

__all__ = ["PickedTrial", "format_value"]

_logger = logging.getLogger(__name__)


def format_value(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass
class PickedTrial:
    """One trial chosen from a study: its number, Schedule and recorded metrics.

    Attributes:
        number: the Optuna trial number.
        schedule: the Schedule the trial applied.
        metrics: what the trial recorded (accuracy, accuracy_drop, speedup, compression,
            latency_ms, sparse_bytes, nonzero_params, params, macs, ...).
        role: ``search`` or one of the reference roles (unpruned, uniform, sensitivity, global).
        feasible: whether the trial met the study's constraints.
        rule: how it was picked, in words.
    """

    number: int
    schedule: Schedule
    metrics: dict[str, Any]
    role: str = study_keys.ROLE_SEARCH
    feasible: bool = True
    rule: str = ""
    # the study's task, rebuilt from its spec when asked (StudyResults.task); None: not tied to a study
    _study_task: Callable[[], Task] | None = field(default=None, repr=False, compare=False)

    def summary(self) -> str:
        """One line: trial number, key metrics and the schedule summary."""
        m = self.metrics
        parts = [f"trial {self.number}"]
        for key, label in (
            ("accuracy", "accuracy"),
            ("accuracy_drop", "drop"),
            ("perplexity", "val perplexity"),
            ("test_perplexity", "test perplexity"),
            ("sparsity", "sparsity"),
            ("latency_ms", "latency_ms"),
            ("speedup", "speedup"),
            ("compression", "compression"),
            ("nonzero_params", "nonzero_params"),
            ("macs", "macs"),
        ):
            value = m.get(key)
            if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                parts.append(f"{label}={format_value(value)}")
        return ", ".join(parts) + f" | {self.schedule.summary()}"

    def apply(
        self,
        model: nn.Module | None = None,
        *,
        task: Task | None = None,
        fine_tune_steps: int | None = None,
        final_fine_tune_steps: int = 0,
    ) -> nn.Module:
        """Prune a copy of ``model`` with this trial's schedule, fine-tuning like the trial.

        With the same (unpruned, trained) model and the same task the result has the trial's
        architecture exactly (parameter count, MACs). Its accuracy matches the trial's to
        floating-point noise on the same machine and software: the built-in tasks seed their
        fine-tuning, so only a different CPU/thread count or torch version moves it (a few
        tenths of a point on ``digits``).

        Args:
            model: the unpruned model; defaults to the task's model.
            task: supplies the example inputs and ``fine_tune``; defaults to the study's task
                rebuilt from its spec (``study.user_attrs["task"]``).
            fine_tune_steps: fine-tuning steps after each pruning step; defaults to the
                schedule's (what the trial did). 0 gives the architecture only.
            final_fine_tune_steps: a final, usually longer, fine-tune after the last pruning
                step, with the unstructured masks still on (pruned weights stay zero).

        Returns:
            A pruned copy; ``model`` is left untouched.
        """
        if task is None:
            if self._study_task is None:
                raise TaskError("this PickedTrial is not tied to a study; pass `task=`")
            task = self._study_task()
        if model is None:
            model = task.model
        schedule = self.schedule
        if fine_tune_steps is not None:
            if fine_tune_steps < 0:
                raise ConfigError(f"`fine_tune_steps >= 0` must hold, but got {fine_tune_steps=}.")
            schedule = dataclasses.replace(schedule, fine_tune_steps=fine_tune_steps)
        if final_fine_tune_steps < 0:
            raise ConfigError(f"`final_fine_tune_steps >= 0` must hold, but got {final_fine_tune_steps=}.")
        needs_tuning = schedule.fine_tune_steps > 0 or final_fine_tune_steps > 0
        # a trial that fine-tuned with distillation is re-applied with it
        fine_tune = task.distill_fine_tune if schedule.distill else task.fine_tune
        if needs_tuning and fine_tune is None:
            what = "fine-tune with distillation" if schedule.distill else "fine-tune"
            raise TaskError(f"task {task.name!r} cannot {what}; pass fine_tune_steps=0 and no final fine-tune")

        def final(pruned: nn.Module, step: int, steps: int) -> None:
            # After the last step, while unstructured masks are still on: zeros stay zero.
            if step == steps and final_fine_tune_steps > 0 and fine_tune is not None:
                _logger.info("final fine-tune of trial %d: %d steps", self.number, final_fine_tune_steps)
                fine_tune(pruned, final_fine_tune_steps)

        pruned = apply_schedule(
            model, schedule, example_inputs=task.example_inputs, fine_tune=fine_tune, on_step=final, output=task.output,
            calibration=task.calibration_inputs,
        )  # fmt: skip
        return pruned.eval()
