"""Screening: a schedule scored cheaply (short fine-tune, BatchNorm re-estimated)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from autoprune.executor import apply_schedule
from autoprune.schedule import Schedule
from autoprune.sensitivity._scan import Calibrate, Evaluate

__all__ = ["screen"]


def screen(
    model: nn.Module,
    schedule: Schedule,
    *,
    example_inputs: Any,
    evaluate: Evaluate,
    fine_tune: Callable[[nn.Module, int], None] | None = None,
    calibrate: Calibrate | None = None,
    fine_tune_steps: int = 0,
    output: str | int | None = None,
) -> tuple[float, nn.Module]:
    """Score ``schedule`` cheaply: prune with ``fine_tune_steps`` per step instead of the
    schedule's own (``schedule.with_fine_tune``), re-estimate BatchNorm, evaluate.

    Returns:
        ``(score, pruned model)``: the model has the schedule's final architecture, so its
        MACs, size and speed are the full schedule's; only the score is a cheap estimate.
    """
    cheap = schedule.with_fine_tune(fine_tune_steps)
    pruned = apply_schedule(model, cheap, example_inputs=example_inputs, fine_tune=fine_tune, output=output)
    if calibrate is not None:
        calibrate(pruned)
    return float(evaluate(pruned.eval())), pruned
