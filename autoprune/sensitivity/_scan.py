"""The scan: every unit pruned alone at a few amounts, BatchNorm re-estimated, scored."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from autoprune._errors import ScheduleError
from autoprune.config import SpaceConfig
from autoprune.evaluation import count_macs
from autoprune.executor import apply_schedule
from autoprune.preflight import LayerInfo
from autoprune.schedule import Schedule
from autoprune.sensitivity._result import Curve, Sensitivity
from autoprune.space import SearchSpace, Unit

__all__ = ["scan_sensitivity", "schedule_alone", "pruning_only", "unit_space", "Evaluate", "Calibrate"]

_logger = logging.getLogger(__name__)
Evaluate = Callable[[nn.Module], float]
Calibrate = Callable[[nn.Module], Any]


def scan_sensitivity(
    model: nn.Module,
    example_inputs: Any,
    space_or_layers: SearchSpace | Sequence[LayerInfo],
    *,
    evaluate: Evaluate,
    calibrate: Calibrate | None = None,
    speedup: Callable[[nn.Module], float] | None = None,
    amounts: Sequence[float] = (0.25, 0.5, 0.75),
    seed: int = 0,
) -> Sensitivity:
    """Prune every unit alone at ``amounts`` and score it, without fine-tuning.

    Units that can lose channels are pruned structurally (amounts above a unit's safe
    maximum are replaced by it); units that cannot (the output layer) are pruned
    unstructured and get accuracy only (their MACs do not change).

    Args:
        model: the trained, unpruned model (not modified).
        example_inputs: inputs for tracing and for counting MACs.
        space_or_layers: the study's SearchSpace (its units are scanned), or the preflight
            (one unit per layer, the default space config).
        evaluate: ``evaluate(model) -> float``, higher is better (the task's validation).
        calibrate: ``calibrate(model)`` re-estimates BatchNorm statistics in place
            (``Task.calibrate``); without it models are scored as pruned.
        speedup: ``speedup(model) -> float`` (reference time / model time, e.g. a
            ``SpeedupMeter``'s ``measure(model).ratio``), called for structured points.
        amounts: amounts to scan, each in (0, 1).
        seed: the schedules' seed.

    Returns:
        The curves, the unpruned scores and MACs, and how long it took.

    Example:
        >>> import autoprune as ap
        >>> from autoprune.testing import models as zoo
        >>> model, x = zoo.get_model("cnn")
        >>> sens = scan_sensitivity(model, x, ap.prunable_layers(model, x),
        ...                         evaluate=lambda m: 0.0, amounts=(0.5,))
        >>> sens.curve("classifier.3") is None  # the output layer: no structured curve
        True
    """
    if not amounts or any(isinstance(a, bool) or not 0 < a < 1 for a in amounts):
        raise ScheduleError(f"`0 < amount < 1` must hold for every scanned amount, but got amounts={list(amounts)!r}.")
    start = time.perf_counter()
    space = unit_space(space_or_layers)
    base_macs = count_macs(model, example_inputs)
    unpruned_score = float(evaluate(model))
    reference_score = unpruned_score
    if calibrate is not None:
        unpruned = copy.deepcopy(model)
        calibrate(unpruned)
        reference_score = float(evaluate(unpruned.eval()))
    curves = []
    for unit in space.units:
        method = "structured" if unit.supports("structured") else "unstructured"
        if not unit.supports(method):
            continue
        curves.append(
            _scan_unit(
                model, example_inputs, space, unit, method, amounts, seed, base_macs, evaluate, calibrate, speedup
            )
        )
    seconds = time.perf_counter() - start
    _logger.info("sensitivity scan: %d units in %.1f s", len(curves), seconds)
    return Sensitivity(
        curves=tuple(curves),
        unpruned_score=unpruned_score,
        reference_score=reference_score,
        unpruned_macs=base_macs,
        seconds=round(seconds, 3),
        calibrated=calibrate is not None,
    )


def unit_space(space_or_layers: SearchSpace | Sequence[LayerInfo]) -> SearchSpace:
    """A per-unit space (the sensitivity parametrization is built on the scan, not for it)."""
    if not isinstance(space_or_layers, SearchSpace):
        return SearchSpace(list(space_or_layers), SpaceConfig())
    if space_or_layers.config.parametrization == "unit":
        return space_or_layers
    layers = [info for unit in space_or_layers.units for info in unit.layers]
    return SearchSpace(layers, dataclasses.replace(space_or_layers.config, parametrization="unit"))


def pruning_only(
    space: SearchSpace, amounts: dict[str, float], method: str = "structured", *, seed: int = 0
) -> Schedule:
    """The schedule of the space that prunes ``{unit: amount}`` in one step, without
    fine-tuning (what the scan and :func:`~autoprune.sensitivity.macs_meter` apply)."""
    schedule = space.schedule_from_params(space.params_for(amounts, method=method), seed=seed)
    return dataclasses.replace(schedule, steps=1, shape="oneshot", fine_tune_steps=0)


def schedule_alone(
    space: SearchSpace, unit: str, amount: float, method: str = "structured", *, seed: int = 0
) -> Schedule:
    """The schedule that prunes ``unit`` alone at ``amount`` in one step, without fine-tuning."""
    return pruning_only(space, {unit: amount}, method, seed=seed)


def _scan_unit(
    model: nn.Module,
    example_inputs: Any,
    space: SearchSpace,
    unit: Unit,
    method: str,
    amounts: Sequence[float],
    seed: int,
    base_macs: int,
    evaluate: Evaluate,
    calibrate: Calibrate | None,
    speedup: Callable[[nn.Module], float] | None,
) -> Curve:
    asked = sorted({round(min(a, unit.max_amount), 6) for a in amounts})
    done, scores, removed, speedups = [], [], [], []
    for amount in asked:
        schedule = schedule_alone(space, unit.key, amount, method, seed=seed)
        if not schedule.active_layers():
            continue  # below the space's grid
        pruned = apply_schedule(model, schedule, example_inputs=example_inputs)
        if calibrate is not None:
            calibrate(pruned)
        scores.append(float(evaluate(pruned.eval())))
        removed.append(base_macs - count_macs(pruned, example_inputs))
        if speedup is not None and method == "structured":
            speedups.append(float(speedup(pruned)))
        done.append(max(p.amount for p in schedule.layers.values()))
    return Curve(
        unit=unit.key,
        method=method,
        amounts=tuple(done),
        scores=tuple(scores),
        macs_removed=tuple(removed),
        speedups=tuple(speedups) if speedups else None,
    )
