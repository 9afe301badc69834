"""The Task: what a search prunes and how it is judged."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoprune._errors import TaskError
from autoprune.tasks._lm import causal_lm_fields
from autoprune.tasks._loaders import loader_fields

__all__ = ["Task", "SCALES", "in_percent"]

SCALES = ("percent", "fraction")


@dataclass
class Task:
    """A model with the means to judge and repair it.

    Attributes:
        name: a short name (used in study names and reports).
        model: the trained, unpruned model. autoprune never modifies it.
        example_inputs: a batch of inputs for tracing and latency measurement.
        evaluate: ``evaluate(model) -> float``, the validation score that a search
            optimises; higher is better. Accuracy drops are reported in the units of this
            number (percent by convention, so a drop is in percentage points; see ``scale``).
        fine_tune: ``fine_tune(model, steps) -> None``, trains ``model`` in place for
            ``steps`` optimiser steps; ``None`` if the task cannot fine-tune.
        model_factory: builds a fresh, trained, unpruned model (for reloading pruned
            weights). Defaults to a deep copy of ``model``.
        metric_name: what ``evaluate`` measures, for tables and plots.
        spec: how the task was made (``digits`` or ``module:factory`` and its options);
            saved with a study so that workers and ``autoprune apply`` rebuild it.
        test: ``test(model) -> float``, the held-out score in the units of ``evaluate``:
            reported, never shown to the sampler. ``None`` if the task has no test split.
        calibrate: ``calibrate(model) -> None``, re-estimates BatchNorm running statistics
            in place on a few training batches (no gradient step) and leaves the model in
            eval mode (see :func:`reestimate_batchnorm`).
        distill_fine_tune: like ``fine_tune``, with a distillation term from the unpruned
            model's outputs added to the loss.
        output: which output of the model is scored: a key of a dict or ``ModelOutput``
            (``"logits"``) or a position in a tuple (see ``autoprune._inputs.select_output``).
        scale: ``"percent"`` or ``"fraction"``: the unit of ``evaluate`` and ``test``;
            ``None`` infers it from the unpruned score (``<= 1.0`` means a fraction). See
            :func:`in_percent`.
        evaluate_samples: ``evaluate_samples(model) -> Tensor | None``: the validation score
            per example, in the units of ``evaluate`` and in the same order on every call
            (top-1: 100 where right, 0 where wrong), whose mean is ``evaluate(model)``; or
            ``None`` when that order cannot be trusted (a shuffling loader). With it a search
            knows how precisely the validation split measures an accuracy drop (the standard
            error of the paired per-example difference from the unpruned model) and does not
            reject a trial for a drop that the split cannot tell from the limit (see
            ``drop_noise_se``). ``None``: the metric does not split into examples.
        higher_is_better: ``False`` for a metric that is better lower (perplexity): its
            drops and limits are relative increases (``max_metric_increase = 0.10`` is +10%).
        calibration_inputs: batches of model inputs for calibration-based criteria (Wanda,
            SparseGPT), drawn from the training split; ``None`` where the task has none.
        metric_notice: one line on how the metric is computed, printed with results.
    """

    name: str
    model: nn.Module
    example_inputs: Any
    evaluate: Callable[[nn.Module], float]
    fine_tune: Callable[[nn.Module, int], None] | None = None
    model_factory: Callable[[], nn.Module] | None = None
    metric_name: str = "accuracy"
    spec: dict[str, Any] = field(default_factory=dict)
    test: Callable[[nn.Module], float] | None = None
    calibrate: Callable[[nn.Module], None] | None = None
    distill_fine_tune: Callable[[nn.Module, int], None] | None = None
    output: str | int | None = None
    scale: str | None = None
    evaluate_samples: Callable[[nn.Module], torch.Tensor | None] | None = None
    higher_is_better: bool = True
    calibration_inputs: list[Any] | None = None
    metric_notice: str | None = None

    def __post_init__(self) -> None:
        _check_scale(self.scale)

    def fresh_model(self) -> nn.Module:
        """A new copy of the unpruned model."""
        if self.model_factory is not None:
            return self.model_factory()
        return copy.deepcopy(self.model)

    @classmethod
    def from_loaders(cls, model: nn.Module, **options: Any) -> Task:
        """A task from a trained model and its DataLoaders.

        The keyword arguments (``train``, ``val``, ``test``, ``loss``, ``optimizer``, ``lr``,
        ``weight_decay``, ``metric``, ``distill``, ``device``, ``seed``, ``output``, ``scale``,
        ``name``, ...) are those of :func:`autoprune.tasks._loaders.loader_fields`.
        """
        _check_scale(options.get("scale"))  # before the loaders are probed
        return cls(**loader_fields(model, **options))

    @classmethod
    def for_causal_lm(cls, model: nn.Module, **options: Any) -> Task:
        """A perplexity task for a causal language model (lower is better).

        The keyword arguments (``train``, ``val``, ``test``, ``tokenizer``,
        ``context_length``, ``calibration_windows``, ...) are those of
        :func:`autoprune.tasks._lm.causal_lm_fields`.
        """
        return cls(**causal_lm_fields(model, **options))


def _check_scale(scale: Any) -> None:
    if scale is not None and scale not in SCALES:
        raise TaskError(f"task scale must be one of {SCALES} or None (inferred), but got scale={scale!r}")


def _times_100(fn: Callable[[nn.Module], float]) -> Callable[[nn.Module], float]:
    def scaled(model: nn.Module) -> float:
        return float(fn(model)) * 100.0

    return scaled


def _samples_times_100(
    fn: Callable[[nn.Module], torch.Tensor | None],
) -> Callable[[nn.Module], torch.Tensor | None]:
    def scaled(model: nn.Module) -> torch.Tensor | None:
        samples = fn(model)
        return None if samples is None else samples * 100.0

    return scaled


def in_percent(task: Task, unpruned_score: float) -> tuple[Task, str | None]:
    """The task with ``evaluate`` and ``test`` in percent, and a one-line notice if it was scaled.

    A task whose ``scale`` is ``"fraction"``, or whose ``scale`` is ``None`` and whose
    unpruned score is ``<= 1.0``, is scored as a fraction: the returned copy multiplies
    ``evaluate``, ``test`` and ``evaluate_samples`` by 100 (and says ``scale="percent"``), so that an accuracy
    constraint of "1 point" means one percentage point. A task in percent comes back as is.

    Args:
        task: the task.
        unpruned_score: ``task.evaluate(task.model)`` in the task's own unit.

    Returns:
        ``(task, notice)``: ``notice`` is ``None`` when nothing changed.

    Raises:
        TaskError: ``task.scale`` is not ``"percent"``, ``"fraction"`` or ``None``.

    Example:
        >>> import autoprune as ap
        >>> from torch import nn
        >>> task = ap.Task(name="t", model=nn.Linear(1, 1), example_inputs=None, evaluate=lambda m: 0.93)
        >>> scaled, notice = ap.tasks.in_percent(task, 0.93)
        >>> scaled.evaluate(task.model)
        93.0
        >>> print(notice)  # doctest: +ELLIPSIS
        task 't' scores as a fraction (unpruned 0.9300, inferred: <= 1.0); autoprune reports it x100 ...
    """
    _check_scale(task.scale)
    if task.scale == "percent" or (task.scale is None and unpruned_score > 1.0):
        return task, None
    why = "declared scale='fraction'" if task.scale == "fraction" else "inferred: <= 1.0"
    notice = (
        f"task {task.name!r} scores as a fraction (unpruned {unpruned_score:.4f}, {why}); autoprune reports it "
        "x100 in percent, so accuracy drops and constraints are in percentage points (set the task's "
        "scale='percent' if it already is)"
    )
    scaled = dataclasses.replace(
        task,
        evaluate=_times_100(task.evaluate),
        test=None if task.test is None else _times_100(task.test),
        evaluate_samples=None if task.evaluate_samples is None else _samples_times_100(task.evaluate_samples),
        scale="percent",
    )
    return scaled, notice
