"""evaluate(): every number a trial records, for one model."""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from autoprune._errors import TargetError
from autoprune.evaluation._cache import LatencyCache, cached_speedup, reusable_latency
from autoprune.evaluation._latency import LatencyResult
from autoprune.evaluation._latency import measure_latency as _measure_latency
from autoprune.evaluation._macs import count_macs
from autoprune.evaluation._metrics import Metrics
from autoprune.evaluation._signature import architecture_signature
from autoprune.evaluation._size import size_stats
from autoprune.evaluation._speedup import Speedup, SpeedupMeter
from autoprune.evaluation._target import Target

__all__ = ["evaluate", "derived_metrics"]


def _is_task(obj: Any) -> bool:
    # Duck typing: the evaluator sits below the tasks and does not import them.
    return callable(getattr(obj, "evaluate", None)) and hasattr(obj, "example_inputs")


def evaluate(
    model: nn.Module,
    task_or_inputs: Any,
    *,
    target: str | Target | None = None,
    cache: LatencyCache | None = None,
    measure_latency: bool = True,
    time_budget_s: float = 1.0,
    lock: bool = True,
    around_latency: Callable[[], AbstractContextManager[object]] | None = None,
    speedup_meter: SpeedupMeter | None = None,
    rel_tol: float = 0.02,
    max_time_budget_s: float | None = None,
    max_spread: float = 0.05,
) -> Metrics:
    """Measure accuracy, size, MACs and latency of a model.

    Args:
        model: the model (left as it was: modes restored, weights untouched, no gradients).
        task_or_inputs: an :class:`autoprune.Task` (accuracy is ``task.evaluate(model)``,
            latency and MACs use ``task.example_inputs``) or plain example inputs (accuracy
            is NaN).
        target: where latency is measured, a :class:`Target` or its text form (default:
            ``"cpu"``, or the meter's target; with a meter it must be the meter's target).
        cache: a :class:`LatencyCache`; an architecture already in it, measured as tightly
            as asked now, is not measured again (``latency_cached`` is then True and
            ``time_latency_s`` is 0). With a meter, a stored speedup is reused only when its
            interval is within ``rel_tol`` (:func:`cached_speedup`); without one, a stored
            latency only when it carries its date and its spread is within ``max_spread``
            (``reusable_latency`` of :mod:`autoprune.evaluation._cache`). A looser entry is measured
            again, and the cache keeps the tighter of the two.
        measure_latency: False skips latency (``latency_ms`` is NaN), for quick checks.
        time_budget_s: time budget of one latency measurement.
        lock: take the machine-wide measurement lock (see :func:`measure_latency`).
        around_latency: a context manager factory entered around the latency measurement
            alone (not a cache hit). The search uses it to stop marking its process busy
            while it measures, so accuracy and MACs are computed as busy work that other
            workers' measurements wait for.
        speedup_meter: the unpruned reference, prepared (:class:`SpeedupMeter`): latency is
            then timed in alternation with it (:meth:`SpeedupMeter.measure`, on the meter's
            example inputs), so machine drift cancels, and ``speedup``, its interval and the
            reference's time are recorded.
        rel_tol: with a meter, the relative half-width of the speedup's 95% interval to aim for.
        max_time_budget_s: with a meter, the most a speedup may take when its interval comes
            out wide (a loaded machine): it is measured again with more time, up to this in all
            (see :func:`cached_speedup`). None: ``time_budget_s``.
        max_spread: without a meter, the relative interquartile range of the repeats
            (``(Q3 - Q1) / median``) a latency measurement stops at, and the most a cached
            latency may have to be reused (:func:`measure_latency`).

    Raises:
        TargetError: the target is invalid or not available here (checked before anything runs).

    Example:
        >>> import autoprune as ap
        >>> from autoprune.testing import models as zoo
        >>> model, x = zoo.get_model("cnn")
        >>> m = ap.evaluate(model, x, target="cpu:threads=1", time_budget_s=0.2)
        >>> m.params == sum(p.numel() for p in model.parameters())
        True
    """
    if speedup_meter is not None:
        if target is not None and Target.parse(target) != speedup_meter.target:
            raise TargetError(
                f"evaluate's target {str(Target.parse(target))!r} differs from the speedup meter's "
                f"{str(speedup_meter.target)!r}; pass the meter's target or none."
            )
        target = speedup_meter.target
    target = Target.parse(target if target is not None else "cpu")
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
    paired: Speedup | None = None
    if measure_latency and speedup_meter is not None:
        paired = cached_speedup(
            speedup_meter,
            model,
            cache,
            budget_s=time_budget_s,
            rel_tol=rel_tol,
            around=around_latency,
            lock=lock,
            max_budget_s=max_time_budget_s,
        )
        cached = paired.cached
        latency = LatencyResult(paired.model_ms, paired.rel_halfwidth, paired.rounds, paired.seconds, paired.wait_s)
    elif measure_latency:
        key = architecture_signature(model, target, inputs) if cache is not None else ""
        stored = cache.get(key) if cache is not None else None
        if stored is not None and reusable_latency(stored, max_spread):
            latency, cached = stored, True
        else:
            with around_latency() if around_latency is not None else contextlib.nullcontext():
                latency = _measure_latency(
                    model, inputs, target, time_budget_s=time_budget_s, max_spread=max_spread, lock=lock
                )
            # Keep the narrower of the two; an entry that cannot be checked (no date) is replaced.
            if cache is not None and (stored is None or not stored.measured_at or not latency.spread > stored.spread):
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
        host=latency.host or socket.gethostname(),
        latency_cached=cached,
        time_eval_s=time_eval_s,
        time_latency_s=time_latency_s,
        latency_wait_s=0.0 if cached else latency.wait_s,
        **_speedup_fields(paired),
    )


def _speedup_fields(paired: Speedup | None) -> dict[str, Any]:
    if paired is None:
        return {}
    return {
        "speedup": paired.ratio,
        "speedup_low": paired.low,
        "speedup_high": paired.high,
        "speedup_converged": paired.converged,
        "reference_latency_ms": paired.reference_ms,
        "latency_clock": paired.clock,
    }


def derived_metrics(metrics: Mapping[str, Any] | Metrics, unpruned: Mapping[str, Any] | Metrics) -> dict[str, float]:
    """``accuracy_drop``, ``speedup`` and ``compression`` of a model against the unpruned one.

    ``accuracy_drop`` is the unpruned model's accuracy minus the model's (task units: points for
    percentages); ``compression`` the unpruned model's dense bytes over the model's sparse bytes;
    ``speedup`` the model's paired ratio (``metrics["speedup"]``, timed in alternation with
    the unpruned model: :func:`~autoprune.evaluate` with a ``speedup_meter``, or
    :func:`~autoprune.measure_speedup`). Two latencies timed apart are never divided into a
    speedup here: the machine drifts between them by more than many pruning steps gain, so
    without a paired ratio ``speedup`` is NaN and the milliseconds stand alone. A value that
    cannot be computed (a number missing, not measured, or a denominator <= 0) is NaN.

    Example:
        >>> derived_metrics({"accuracy": 90.0, "speedup": 1.25, "sparse_bytes": 25},
        ...                 {"accuracy": 91.5, "latency_ms": 2.5, "dense_bytes": 100})
        {'accuracy_drop': 1.5, 'test_accuracy_drop': nan, 'speedup': 1.25, 'compression': 4.0}
        >>> derived_metrics({"latency_ms": 2.0}, {"latency_ms": 2.5})["speedup"]  # not paired
        nan
    """
    m = metrics.as_dict() if isinstance(metrics, Metrics) else metrics
    b = unpruned.as_dict() if isinstance(unpruned, Metrics) else unpruned

    def number(value: Any) -> float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan

    def ratio(num: Any, den: Any) -> float:
        n, d = number(num), number(den)
        return n / d if d > 0 else math.nan  # NaN stays NaN

    def drop(key: str) -> float:
        # Rounded to 9 decimals: 82.7 - 81.7 is 1.0000000000000142 in floats, which must not
        # break a constraint of 1 point.
        value = number(b.get(key)) - number(m.get(key))
        return round(value, 9) if math.isfinite(value) else value

    paired = number(m.get("speedup"))
    return {
        "accuracy_drop": drop("accuracy"),
        "test_accuracy_drop": drop("test_accuracy"),
        "speedup": paired if paired > 0 else math.nan,
        "compression": ratio(b.get("dense_bytes"), m.get("sparse_bytes")),
    }


def drop_standard_error(reference: torch.Tensor | None, samples: torch.Tensor | None) -> float:
    """The standard error of an accuracy drop measured on one split, from scores per example.

    ``reference`` and ``samples`` are the per-example scores of the unpruned and of the pruned
    model on the same examples in the same order (a task's ``evaluate_samples``); the drop is
    the mean of their difference, and its standard error is the sample standard deviation of
    the difference over ``sqrt(n)``. Paired, so what both models get right or wrong alike adds
    no noise: only the examples on which they disagree do. For top-1 in percent with ``b``
    examples lost and ``c`` gained out of ``n``, that is about ``100 * sqrt(b + c) / n``: 2000
    validation images on which two models disagree 150 times measure their drop to +-0.6
    points.

    Returns:
        The standard error in the units of the scores; NaN when either is missing, their
        shapes differ or there are fewer than 2 examples.

    Example:
        >>> ref = torch.tensor([100.0, 100.0, 0.0, 100.0])
        >>> round(drop_standard_error(ref, torch.tensor([100.0, 0.0, 0.0, 100.0])), 3)
        25.0
        >>> drop_standard_error(ref, ref)
        0.0
    """
    if reference is None or samples is None or reference.shape != samples.shape or reference.numel() < 2:
        return math.nan
    difference = reference.to(torch.float64).reshape(-1) - samples.to(torch.float64).reshape(-1)
    return float(difference.std(unbiased=True)) / math.sqrt(difference.numel())


def sample_mean(samples: torch.Tensor) -> float:
    """The mean of per-example scores as a task's ``evaluate`` gives it (exactly, for top-1:
    the sum of 100.0s and 0.0s is exact in float64, then divided once, as ``100 * hits / n``)."""
    return float(samples.to(torch.float64).sum()) / max(samples.numel(), 1)
