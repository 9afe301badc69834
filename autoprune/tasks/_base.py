"""The Task: what a search prunes and how it is judged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["Task"]


@dataclass
class Task:
    """A model with the means to judge and repair it.

    Attributes:
        name: a short name (used in study names and reports).
        model: the trained, unpruned model. autoprune never modifies it.
        example_inputs: a batch of inputs for tracing and latency measurement.
        evaluate: ``evaluate(model) -> float``, higher is better. Accuracy drops are
            reported in the units of this number (the built-in tasks return percent, so a
            drop is in percentage points).
        fine_tune: ``fine_tune(model, steps) -> None``, trains ``model`` in place for
            ``steps`` optimiser steps; ``None`` if the task cannot fine-tune.
        model_factory: builds a fresh, trained, unpruned model (for reloading pruned
            weights). Defaults to a deep copy of ``model``.
        metric_name: what ``evaluate`` measures, for tables and plots.
        spec: how the task was made (``digits`` or ``module:factory`` and its options);
            saved with a study so that workers and ``autoprune apply`` rebuild it.
    """

    name: str
    model: nn.Module
    example_inputs: Any
    evaluate: Callable[[nn.Module], float]
    fine_tune: Callable[[nn.Module, int], None] | None = None
    model_factory: Callable[[], nn.Module] | None = None
    metric_name: str = "accuracy"
    spec: dict[str, Any] = field(default_factory=dict)

    def fresh_model(self) -> nn.Module:
        """A new copy of the unpruned model."""
        if self.model_factory is not None:
            return self.model_factory()
        import copy

        return copy.deepcopy(self.model)
