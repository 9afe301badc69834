"""The Metrics record: every number a trial stores."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Metrics", "METRIC_NAMES"]

# Names used by the search, the study attributes and the reports.
METRIC_NAMES = (
    "accuracy",
    "params",
    "nonzero_params",
    "dense_bytes",
    "sparse_bytes",
    "macs",
    "latency_ms",
    "latency_spread",
)


@dataclass(frozen=True)
class Metrics:
    """What :func:`autoprune.evaluate` measured for one model.

    Attributes:
        accuracy: the task's ``evaluate(model)`` (higher is better); NaN when no task.
        params: parameter count, dense (every element, zero or not).
        nonzero_params: parameters that are not exactly zero.
        dense_bytes: bytes of the state dict stored dense, each tensor at its own dtype's size.
        sparse_bytes: bytes stored with the smaller of bitmask+values or CSR for tensors
            with zeros (never more than dense per tensor).
        macs: multiply-accumulates of one forward pass of ONE sample (the first of the
            example batch), so it does not depend on the batch size.
        latency_ms: median latency of one forward pass of a batch (the target's batch size,
            or the example batch) on the target; NaN when latency was not measured.
        latency_spread: relative spread of the latency timings ((Q3 - Q1) / median).
        latency_repeats: number of timed repetitions behind the median.
        target: the target spec the latency was measured on, as a string.
        host: the machine that measured the latency.
        latency_cached: True when the latency came from the cache.
        time_eval_s: seconds spent on accuracy, size and MACs.
        time_latency_s: seconds spent on latency, waiting for the lock included (0 on a
            cache hit).
        latency_wait_s: of those, seconds spent waiting for the machine-wide measurement lock.
        speedup: reference time / model time, timed in alternation with the reference when
            :func:`~autoprune.evaluate` was given a ``speedup_meter`` (NaN otherwise); then
            ``latency_ms`` is the model's time from the same rounds, ``latency_spread`` the
            relative half-width of the speedup's interval and ``latency_repeats`` its rounds.
        speedup_low: lower end of the speedup's 95% interval.
        speedup_high: upper end of the speedup's 95% interval.
        speedup_converged: False when the interval did not reach the tolerance in the budget.
        reference_latency_ms: the reference's time per call, from the same rounds.
        latency_clock: ``"thread"`` (CPU time of the calling thread) or ``"wall"``.
    """

    accuracy: float
    params: int
    nonzero_params: int
    dense_bytes: int
    sparse_bytes: int
    macs: int
    latency_ms: float
    latency_spread: float
    latency_repeats: int = 0
    target: str = "cpu"
    host: str = ""
    latency_cached: bool = False
    time_eval_s: float = 0.0
    time_latency_s: float = 0.0
    latency_wait_s: float = 0.0
    speedup: float = math.nan
    speedup_low: float = math.nan
    speedup_high: float = math.nan
    speedup_converged: bool = False
    reference_latency_ms: float = math.nan
    latency_clock: str = "wall"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
