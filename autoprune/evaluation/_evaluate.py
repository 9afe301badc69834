"""evaluate(): every number a trial records, for one model."""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from autoprune.evaluation._cache import LatencyCache, architecture_signature
from autoprune.evaluation._latency import LatencyResult
from autoprune.evaluation._latency import measure_latency as _measure_latency
from autoprune.evaluation._macs import count_macs
from autoprune.evaluation._metrics import Metrics
from autoprune.evaluation._size import size_stats
from autoprune.evaluation._target import Target

__all__ = ["evaluate", "compression_ratio", "accuracy_drop", "speedup", "relative_metrics"]


def _is_task(obj: Any) -> bool:
    from autoprune.tasks import Task

    return isinstance(obj, Task)


def evaluate(
    model: nn.Module,
    task_or_inputs: Any,
    *,
    target: str | Target = "cpu",
    cache: LatencyCache | None = None,
    measure_latency: bool = True,
    time_budget_s: float = 1.0,
    lock: bool = True,
    around_latency: Callable[[], AbstractContextManager[object]] | None = None,
) -> Metrics:
    """Measure accuracy, size, MACs and latency of a model.

    Args:
        model: the model (left as it was: modes restored, weights untouched, no gradients).
        task_or_inputs: an :class:`autoprune.Task` (accuracy is ``task.evaluate(model)``,
            latency and MACs use ``task.example_inputs``) or plain example inputs (accuracy
            is NaN).
        target: where latency is measured, a :class:`Target` or its text form.
        cache: a :class:`LatencyCache`; an architecture already in it is not measured again
            (``latency_cached`` is then True and ``time_latency_s`` is 0).
        measure_latency: False skips latency (``latency_ms`` is NaN), for quick checks.
        time_budget_s: time budget of one latency measurement.
        lock: take the machine-wide measurement lock (see :func:`measure_latency`).
        around_latency: a context manager factory entered around the latency measurement
            alone (not a cache hit). The search uses it to stop marking its process busy
            while it measures, so accuracy and MACs are computed as busy work that other
            workers' measurements wait for.

    Raises:
        TargetError: the target is invalid or not available here (checked before anything runs).

    Example:
        >>> import autoprune as ap
        >>> model, x = ap.zoo.get("cnn")
        >>> m = ap.evaluate(model, x, target="cpu:threads=1", time_budget_s=0.2)
        >>> m.params == sum(p.numel() for p in model.parameters())
        True
    """
    target = Target.parse(target)
    if measure_latency:
        target.check_available()
    if _is_task(task_or_inputs):
        task, inputs = task_or_inputs, task_or_inputs.example_inputs
    else:
        task, inputs = None, task_or_inputs
    modes = {m: m.training for m in model.modules()}
    start = time.perf_counter()
    try:
        accuracy = math.nan
        if task is not None:
            with torch.no_grad():
                accuracy = float(task.evaluate(model))
        size = size_stats(model)
        macs = count_macs(model, inputs)
    finally:
        for module, training in modes.items():
            module.training = training
    time_eval_s = time.perf_counter() - start

    start = time.perf_counter()
    latency = LatencyResult(math.nan, math.nan, 0, 0.0)
    cached = False
    if measure_latency:
        key = architecture_signature(model, target, inputs) if cache is not None else ""
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            latency, cached = hit, True
        else:
            with around_latency() if around_latency is not None else contextlib.nullcontext():
                latency = _measure_latency(model, inputs, target, time_budget_s=time_budget_s, lock=lock)
            if cache is not None:
                cache.put(key, latency)
    time_latency_s = 0.0 if cached else time.perf_counter() - start

    return Metrics(
        accuracy=accuracy,
        params=size["params"],
        nonzero_params=size["nonzero_params"],
        dense_bytes=size["dense_bytes"],
        sparse_bytes=size["sparse_bytes"],
        macs=macs,
        latency_ms=latency.median_ms,
        latency_spread=latency.spread,
        latency_repeats=latency.repeats,
        target=str(target),
        host=socket.gethostname(),
        latency_cached=cached,
        time_eval_s=time_eval_s,
        time_latency_s=time_latency_s,
        latency_wait_s=0.0 if cached else latency.wait_s,
    )


def compression_ratio(metrics: Metrics, baseline: Metrics) -> float:
    """Baseline dense bytes over the model's sparse bytes (how many times smaller it stores)."""
    return baseline.dense_bytes / metrics.sparse_bytes if metrics.sparse_bytes else math.inf


def accuracy_drop(metrics: Metrics, baseline: Metrics) -> float:
    """Baseline accuracy minus the model's, in the task's units (points for percentages)."""
    return baseline.accuracy - metrics.accuracy


def speedup(metrics: Metrics, baseline: Metrics) -> float:
    """Baseline latency over the model's latency (NaN when either was not measured)."""
    if math.isnan(metrics.latency_ms) or math.isnan(baseline.latency_ms) or metrics.latency_ms <= 0:
        return math.nan
    return baseline.latency_ms / metrics.latency_ms


def relative_metrics(metrics: Metrics, baseline: Metrics) -> dict[str, float]:
    """``accuracy_drop``, ``speedup`` and ``compression`` against the unpruned model's metrics."""
    return {
        "accuracy_drop": accuracy_drop(metrics, baseline),
        "speedup": speedup(metrics, baseline),
        "compression": compression_ratio(metrics, baseline),
    }
