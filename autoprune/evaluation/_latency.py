"""Latency measurement on a target, isolated from other workers by a machine-wide lock.

Method (every backend and device):

1. The model is put in eval mode, the example batch is resized to the target's batch size,
   moved to its device and cast to its dtype; the backend prepares a callable.
2. The machine-wide measurement lock is taken (see below), the thread count is set, the
   garbage collector is paused, and everything runs under ``torch.inference_mode()``.
3. Warm-up: at least 3 calls and about 15% of the time budget.
4. Timing: each *repeat* times ``k`` back-to-back calls (``k`` chosen from the warm-up so a
   repeat lasts about 1/50 of the budget, at least 1 ms) and records the mean time per call.
   Repeats go on until there are at least ``min_repeats`` of them and their relative spread
   is at most ``max_spread``, or until the time budget is spent (at least 3 repeats).
   On CUDA each repeat is timed with CUDA events on the target device.
5. Reported: the median per-call time in ms, and ``spread = (Q3 - Q1) / median`` of the
   repeats (relative interquartile range).

Isolation: a latency measured while another process computes is not the model's latency.
Every measurement holds an exclusive file lock (``filelock.FileLock``) whose path is
machine-wide: ``$AUTOPRUNE_LATENCY_LOCK`` if set, else ``autoprune-latency.lock`` in
:func:`tempfile.gettempdir`. So only one measurement runs at a time on a machine, across all
studies and workers. Training does not hold that lock; training loops cooperate through
:func:`training_gate`:

- ``training_gate()`` called between steps waits while a measurement is in progress;
- ``with training_gate(): step()`` also marks the step as running (a shared ``flock`` on
  the companion file ``<lock>.steps``), and a measurement that has taken the lock waits
  for every step that is already running to finish before it starts timing. New steps
  wait at the gate, so measurements are not starved and never overlap a gated step.

Processes that do not use the gate (another user's job) are not paused: run a study on a
machine of its own when its latencies matter.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

import torch
from torch import nn

from autoprune._inputs import resize_batch, to_target
from autoprune._lock import LOCK_ENV, TrainingGate, default_lock_path, machine_lock, training_gate
from autoprune.evaluation._backends import get_backend
from autoprune.evaluation._target import Target

__all__ = [
    "LatencyResult",
    "measure_latency",
    "training_gate",
    "TrainingGate",
    "default_lock_path",
    "LOCK_ENV",
    "timing_conditions",
]

_logger = logging.getLogger(__name__)


class LatencyResult(NamedTuple):
    """One latency measurement.

    Attributes:
        median_ms: median time of one forward pass of one batch, in milliseconds.
        spread: relative interquartile range of the repeats, ``(Q3 - Q1) / median``.
        repeats: number of timed repeats behind the median.
        seconds: wall time the measurement took (warm-up and timing, not the lock wait).
        wait_s: seconds spent waiting for the measurement lock.
        calls_per_repeat: forward passes averaged in each repeat.
        measured_at: when it was measured (UTC, ISO 8601, to the second); ``""`` when not
            known (a result stored before this field existed: the latency cache measures
            such an entry again).
        host: the machine that measured it (``""`` when not known).
    """

    median_ms: float
    spread: float
    repeats: int
    seconds: float
    wait_s: float = 0.0
    calls_per_repeat: int = 1
    measured_at: str = ""
    host: str = ""


def make_timer(target: Target) -> Callable[[Callable[[], object], int], float]:
    """``timer(run, n)``: seconds for ``n`` back-to-back calls of ``run`` on the target."""
    if target.is_cuda:

        def cuda_timer(run: Callable[[], object], n: int) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                run()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0

        return cuda_timer

    def cpu_timer(run: Callable[[], object], n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            run()
        return time.perf_counter() - start

    return cpu_timer


def _spread(per_call: list[float]) -> tuple[float, float]:
    median = statistics.median(per_call)
    if len(per_call) < 2 or median <= 0:
        return median, 0.0
    q1, _, q3 = statistics.quantiles(per_call, n=4, method="inclusive")
    return median, (q3 - q1) / median


def _time(
    run: Callable[[], object], target: Target, time_budget_s: float, max_spread: float, min_repeats: int
) -> tuple[float, float, int, int]:
    timer = make_timer(target)
    start = time.perf_counter()
    deadline = start + time_budget_s
    warm: list[float] = []
    while len(warm) < 3 or time.perf_counter() - start < 0.15 * time_budget_s:
        warm.append(timer(run, 1))
    per_call_estimate = max(statistics.median(warm[1:]), 1e-7)
    repeat_s = max(time_budget_s / 50, 1e-3)
    calls = max(1, round(repeat_s / per_call_estimate))
    per_call: list[float] = []
    while True:
        per_call.append(timer(run, calls) / calls)
        n = len(per_call)
        if n >= 3 and time.perf_counter() >= deadline:
            break
        if n >= min_repeats and _spread(per_call)[1] <= max_spread:
            break
    median, spread = _spread(per_call)
    return median, spread, len(per_call), calls


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    target: str | Target = "cpu",
    *,
    time_budget_s: float = 1.0,
    max_spread: float = 0.05,
    min_repeats: int = 10,
    lock: bool = True,
    lock_path: str | os.PathLike[str] | None = None,
) -> LatencyResult:
    """Measure the latency of one forward pass on the target (see the module docs for the method).

    The model is left as it was: modes restored, weights and device untouched (a copy is
    made when the target's device or dtype differs from the model's).

    Args:
        model: the model to time.
        example_inputs: a tensor, tuple or dict of inputs (see :func:`resize_batch`).
        target: a :class:`Target` or its text form (``"cpu:threads=1,batch=8"``).
        time_budget_s: the time the measurement may take, warm-up included (the lock
            wait is not counted); it stops earlier once the repeats agree.
        max_spread: stop once the relative interquartile range of the repeats is below this.
        min_repeats: the fewest repeats an early stop may rest on.
        lock: hold the machine-wide measurement lock (turn off only to study its effect).
        lock_path: the lock file (default: :func:`default_lock_path`).

    Raises:
        TargetError: the target is invalid or not available on this machine.

    Example:
        >>> import autoprune as ap
        >>> from autoprune.testing import models as zoo
        >>> m, x = zoo.get_model("cnn")
        >>> r = measure_latency(m, x, "cpu:threads=1", time_budget_s=0.2)
        >>> r.median_ms > 0
        True
    """
    if not (time_budget_s > 0 and math.isfinite(time_budget_s)):
        raise ValueError(f"`time_budget_s > 0` must hold, but got {time_budget_s=}.")
    if max_spread < 0:
        raise ValueError(f"`max_spread >= 0` must hold, but got {max_spread=}.")
    target = Target.parse(target)
    target.check_available()
    backend = get_backend(target.backend)
    modes = {m: m.training for m in model.modules()}
    device_ctx = torch.cuda.device(target.torch_device) if target.is_cuda else contextlib.nullcontext()
    try:
        model.eval()
        with device_ctx, torch.inference_mode():
            inputs = to_target(resize_batch(example_inputs, target.batch_size), target.torch_device, target.torch_dtype)
            run = backend.prepare(model, inputs, target)
            with timing_conditions(target, lock=lock, lock_path=lock_path) as wait_s:
                started = time.perf_counter()
                median_s, spread, repeats, calls = _time(run, target, time_budget_s, max_spread, min_repeats)
                seconds = time.perf_counter() - started
    finally:
        for module, training in modes.items():
            module.training = training
    result = LatencyResult(median_s * 1e3, spread, repeats, seconds, wait_s, calls, _now(), socket.gethostname())
    _logger.debug("latency on %s: %s", target, result)
    return result


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def timing_conditions(
    target: Target, *, lock: bool = True, lock_path: str | os.PathLike[str] | None = None
) -> Iterator[float]:
    """The conditions every timing in the evaluator runs under, for latency and speedup alike.

    It holds the machine lock for a measurement (``machine_lock(lock_path).measuring()``; the one
    place the evaluator takes it), sets the target's thread count and pauses the garbage
    collector; all three are restored on exit. Yields the seconds spent waiting for the lock.
    """
    threads = torch.get_num_threads()
    gc_enabled = gc.isenabled()
    try:
        with machine_lock(lock_path).measuring() if lock else contextlib.nullcontext(0.0) as wait_s:
            if target.threads is not None and target.threads != threads:
                torch.set_num_threads(target.threads)
            gc.disable()
            yield wait_s
    finally:
        if gc_enabled:
            gc.enable()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
