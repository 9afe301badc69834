"""Speedup against a reference, timed in one sitting so that machine drift cancels.

A latency measured now and another measured a minute later differ by the machine's drift
(other tenants, frequency scaling, caches), often by tens of percent on a shared machine.
Their ratio carries that drift. So a speedup is measured *paired*:

1. Both models are prepared by the target's backend (same process, threads, batch, dtype).
2. Warm-up: both sides alternately, at least 3 calls each and about 10% of the budget; the
   per-call times it gives fix, once, how many calls a *block* makes: enough that a block
   takes at least 5 ms, so clock resolution and call overhead do not matter, and about
   1/160 of the budget, so about 40 rounds fit in it (``max_rounds`` of them when that is
   set).
3. Rounds: each round times four blocks in ABBA order (reference, model, model, reference;
   the next round BAAB), so a drift that is linear within a round hits both sides equally,
   and neither side is always first. A round gives one ratio, reference time per call over
   model time per call.
4. The clock: on a single-threaded CPU target (``threads=1``) blocks are timed with the
   thread's CPU time (``time.thread_time``), so the time the scheduler hands to other
   processes on a busy machine does not count; what remains of the drift (frequency,
   caches, memory bandwidth) hits both sides of a round alike. Warm-up checks that the work
   runs on the calling thread (most of the process's CPU time during warm-up is this
   thread's), else the wall clock is used, as it is on other targets (CUDA events on CUDA).
   :attr:`Speedup.clock` says which.
5. The speedup is the median of the round ratios; its 95% interval is the distribution-free
   order-statistic interval of the median (:func:`median_interval`). Rounds go on until
   the interval lies within ``+-rel_tol`` of the median (at least ``min_rounds`` rounds),
   or until the budget is spent; :attr:`Speedup.converged` says which.

Everything runs under :func:`~autoprune.evaluation.measuring` (the machine-wide measurement
lock, the target's threads, the garbage collector paused) for the whole measurement.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from autoprune._inputs import resize_batch, to_target
from autoprune.evaluation._backends import get_backend
from autoprune.evaluation._latency import make_timer, timing_conditions
from autoprune.evaluation._signature import architecture_signature
from autoprune.evaluation._target import Target

__all__ = ["Speedup", "SpeedupMeter", "measure_speedup", "median_interval"]

MIN_BLOCK_S = 0.005  # the shortest a block of calls may take
_ROUNDS_PER_BUDGET = 40  # blocks are sized so a budget holds about this many rounds
_WARMUP_SHARE = 0.1
_CLOCKS = ("auto", "thread", "wall")
# The thread clock needs this share of the process's CPU time during warm-up to be the
# calling thread's: work handed to other threads of the process would not be counted.
# (Compared with the process's CPU time, not wall time, so a busy machine does not matter.)
_ON_THREAD = 0.8


@dataclass(frozen=True)
class Speedup:
    """A speedup measured in alternation with the reference (see the module docs).

    Attributes:
        ratio: reference time / model time per call, the median over rounds (> 1: faster).
        low: lower end of the 95% interval of the ratio.
        high: upper end of the 95% interval of the ratio.
        rounds: rounds timed (each gives one ratio).
        model_ms: the model's median time per call (one batch), in ms.
        reference_ms: the reference's median time per call, in ms, timed in the same rounds.
        converged: True when the interval lies within ``+-rel_tol`` of the ratio; False when
            the budget ran out first (or fewer than 6 rounds fit: then ``low``/``high`` are the
            smallest and largest round ratio, which covers less than 95%).
        rel_tol: the relative half-width asked for.
        budget_s: the time budget of the measurement.
        target: the target's text form.
        seconds: wall time of warm-up and rounds (not the lock wait, not preparation).
        wait_s: seconds spent waiting for the measurement lock.
        model_calls: calls of the model in each block.
        reference_calls: calls of the reference in each block.
        cached: True when this came from a :class:`LatencyCache` instead of being measured now.
        clock: ``"thread"`` (the thread's CPU time: ``model_ms`` and ``reference_ms`` are what
            a call costs on a core of its own) or ``"wall"`` (elapsed time; CUDA events on CUDA).
    """

    ratio: float
    low: float
    high: float
    rounds: int
    model_ms: float
    reference_ms: float
    converged: bool
    rel_tol: float = 0.02
    budget_s: float = math.nan
    target: str = "cpu"
    seconds: float = 0.0
    wait_s: float = 0.0
    model_calls: int = 1
    reference_calls: int = 1
    cached: bool = False
    clock: str = "wall"

    @property
    def rel_halfwidth(self) -> float:
        """The larger distance from the ratio to an end of its interval, relative to the ratio."""
        if not self.ratio > 0:
            return math.inf
        return max(self.high / self.ratio - 1.0, 1.0 - self.low / self.ratio)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Speedup:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, bool]:
    """The median of ``values`` and a distribution-free confidence interval for it.

    The interval is ``[x_(k), x_(n+1-k)]`` of the sorted values with the largest ``k`` such
    that ``2 * P(Binomial(n, 1/2) <= k - 1) <= 1 - confidence``: the true median lies below
    ``x_(k)`` only if at most ``k - 1`` of the ``n`` values fall below it, and each value
    falls below it with probability 1/2. It assumes only that the values are independent
    draws from one continuous distribution: no shape, so it holds for the skewed,
    heavy-tailed ratios that bursts of load produce, where a normal interval does not; and
    unlike a bootstrap of the median (which is discrete and under-covers for a few dozen
    values) its coverage is exact for every ``n``. Checking it after every round (optional
    stopping) makes it a little optimistic; a minimum number of rounds keeps that small.

    Returns:
        ``(median, low, high, covered)``; ``covered`` is False when there are too few values
        for the confidence asked (fewer than 6 at 95%): then the interval is the full range.

    Example:
        >>> median_interval([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
        (4.5, 1.0, 8.0, True)
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan, False
    alpha = Fraction(1 - confidence).limit_denominator(10**6)
    total = 2**n
    k, below = 0, 0  # below: the number of ways that at most k values fall below the median
    while k < n // 2:
        below += math.comb(n, k)
        if 2 * below > alpha * total:
            break
        k += 1
    covered = k >= 1
    k = max(k, 1)
    return statistics.median(xs), xs[k - 1], xs[n - k], covered


class SpeedupMeter:
    """The reference, prepared once by the target's backend, to time models against.

    A search worker keeps one and calls :meth:`measure` for every trial, so the reference is
    not prepared again (which matters for the ``compile`` and ``onnxruntime`` backends).

    Every measurement times the reference too; the first one this meter makes fixes
    :meth:`reference_ms`, the reference's time per call on this host in this process, which
    a search scales its trials' speedups by (one number per sitting, so the drift between
    trials cancels, and never another host's or another day's).

    Args:
        reference: the model speedups are measured against (usually the unpruned model).
            A copy is kept, in eval mode; later changes to ``reference`` do not reach it.
        example_inputs: a tensor, tuple or dict of inputs, resized to the target's batch size.
        target: a :class:`Target` or its text form.

    Raises:
        TargetError: the target is invalid, not available here, or its backend cannot run
            the reference.

    Example:
        >>> import autoprune as ap
        >>> from autoprune.testing import models as zoo
        >>> model, x = zoo.get_model("cnn")
        >>> meter = SpeedupMeter(model, x, "cpu:threads=1")
        >>> s = meter.measure(model, budget_s=0.3)
        >>> s.low <= s.ratio <= s.high
        True
    """

    def __init__(self, reference: nn.Module, example_inputs: Any, target: str | Target = "cpu") -> None:
        self.target = Target.parse(target)
        self.target.check_available()
        self.backend = get_backend(self.target.backend)
        self.reference = copy.deepcopy(reference).eval()
        self.example_inputs = example_inputs
        with self._context():
            self.inputs = to_target(
                resize_batch(example_inputs, self.target.batch_size), self.target.torch_device, self.target.torch_dtype
            )
            self._reference_run = self.backend.prepare(self.reference, self.inputs, self.target)
        self._reference_signature: str | None = None
        self._first: Speedup | None = None  # the first measurement this meter made

    def __repr__(self) -> str:
        return f"SpeedupMeter({type(self.reference).__name__}, target={str(self.target)!r})"

    @property
    def reference_signature(self) -> str:
        """The reference's :func:`architecture_signature` on this target (its identity in caches)."""
        if self._reference_signature is None:
            self._reference_signature = architecture_signature(self.reference, self.target, self.example_inputs)
        return self._reference_signature

    @property
    def first_measurement(self) -> Speedup | None:
        """The first measurement this meter made (in this process, on this host), or None."""
        return self._first

    def reference_ms(self, *, budget_s: float = 1.0, **measure_options: Any) -> float:
        """The reference's time per call, in ms, as this meter timed it: the ``reference_ms``
        of its first measurement (every measurement times the reference in its rounds). A
        meter that has measured nothing yet times the reference against itself now
        (``budget_s`` and ``measure_options`` as in :meth:`measure`).

        One number for the meter's life: a search worker divides it by each trial's paired
        speedup, so its trials' latencies share one reference time, measured where they ran.
        """
        if self._first is None:
            self.measure(self.reference, budget_s=budget_s, **measure_options)
        assert self._first is not None
        return self._first.reference_ms

    def _context(self) -> contextlib.AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        if self.target.is_cuda:
            stack.enter_context(torch.cuda.device(self.target.torch_device))
        stack.enter_context(torch.inference_mode())
        return stack

    def measure(
        self,
        model: nn.Module,
        *,
        budget_s: float = 2.0,
        rel_tol: float = 0.02,
        min_rounds: int = 8,
        max_rounds: int | None = None,
        lock: bool = True,
        lock_path: Any = None,
        clock: str = "auto",
        block_s: float | None = None,
    ) -> Speedup:
        """Time ``model`` against the reference in alternating rounds (see the module docs).

        The model is left as it was (modes restored, weights untouched).

        Args:
            model: the model to time.
            budget_s: time the warm-up and rounds may take (not the lock wait, not the
                backend's preparation); at least 3 rounds run whatever the budget.
            rel_tol: stop once the 95% interval lies within ``ratio * (1 +- rel_tol)``.
            min_rounds: the fewest rounds an early stop may rest on (at least 6).
            max_rounds: stop after this many rounds even if not converged (None: no limit).
            lock: hold the machine-wide measurement lock (turn off only to study its effect).
            lock_path: the lock file (default: :func:`default_lock_path`).
            clock: ``"auto"`` (the thread's CPU time on a ``threads=1`` CPU target when the
                work runs on the calling thread, else wall time), ``"thread"`` or ``"wall"``.
            block_s: how long one block of calls should last (default: the budget over
                ``4 * max_rounds``, or over 160 without ``max_rounds``; at least 5 ms).

        Raises:
            TargetError: the backend cannot run the model.
        """
        if not (budget_s > 0 and math.isfinite(budget_s)):
            raise ValueError(f"`budget_s > 0` must hold, but got {budget_s=}.")
        if not rel_tol >= 0:
            raise ValueError(f"`rel_tol >= 0` must hold, but got {rel_tol=}.")
        if max_rounds is not None and max_rounds < 1:
            raise ValueError(f"`max_rounds >= 1` (or None) must hold, but got {max_rounds=}.")
        if block_s is not None and not block_s > 0:
            raise ValueError(f"`block_s > 0` (or None) must hold, but got {block_s=}.")
        if clock not in _CLOCKS or (clock == "thread" and self.target.is_cuda):
            raise ValueError(f"`clock` must be one of {', '.join(_CLOCKS)} ('thread' on cpu only), but got {clock=}.")
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()
            with self._context():
                # the reference itself is prepared already (reference_ms times it alone)
                run = (
                    self._reference_run
                    if model is self.reference
                    else self.backend.prepare(model, self.inputs, self.target)
                )
                with timing_conditions(self.target, lock=lock, lock_path=lock_path) as wait_s:
                    started = time.perf_counter()
                    if clock == "auto":
                        clock = "thread" if self.target.threads == 1 and not self.target.is_cuda else "wall"
                    rounds = _Rounds(self._reference_run, run, self.target, budget_s, clock)
                    rounds.run(rel_tol, max(min_rounds, 6), max_rounds, block_s)
                    seconds = time.perf_counter() - started
        finally:
            for module, training in modes.items():
                module.training = training
        ratio, low, high, _ = median_interval(rounds.ratios)
        result = Speedup(
            ratio=ratio,
            low=low,
            high=high,
            rounds=len(rounds.ratios),
            model_ms=statistics.median(rounds.model_s) * 1e3,
            reference_ms=statistics.median(rounds.reference_s) * 1e3,
            converged=_converged(rounds.ratios, rel_tol),
            rel_tol=rel_tol,
            budget_s=budget_s,
            target=str(self.target),
            seconds=seconds,
            wait_s=wait_s,
            model_calls=rounds.model_calls,
            reference_calls=rounds.reference_calls,
            clock=rounds.clock,
        )
        if self._first is None:
            self._first = result
        return result


def _converged(ratios: Sequence[float], rel_tol: float) -> bool:
    """Whether the 95% interval of the median ratio lies within ``+-rel_tol`` of it."""
    ratio, low, high, covered = median_interval(ratios)
    return covered and low >= ratio * (1 - rel_tol) and high <= ratio * (1 + rel_tol)


def _both_clocks(run: Callable[[], object], timer: Callable[[Callable[[], object], int], float]) -> tuple[float, float]:
    cpu = time.thread_time()
    wall = timer(run, 1)
    return wall, time.thread_time() - cpu


def _thread_timer(run: Callable[[], object], n: int) -> float:
    start = time.thread_time()
    for _ in range(n):
        run()
    return time.thread_time() - start


class _Rounds:
    """The timing loop of one paired measurement: warm-up, calibration, ABBA rounds."""

    def __init__(
        self,
        reference: Callable[[], object],
        model: Callable[[], object],
        target: Target,
        budget_s: float,
        clock: str,
    ) -> None:
        self.reference, self.model, self.target, self.budget_s, self.clock = reference, model, target, budget_s, clock
        self.timer = make_timer(target)
        self.start = time.perf_counter()
        self.ratios: list[float] = []
        self.model_s: list[float] = []
        self.reference_s: list[float] = []
        self.reference_calls = self.model_calls = 1

    def _warm_up(self, max_rounds: int | None, block_s: float | None) -> None:
        ref: list[tuple[float, float]] = []  # (wall, thread CPU) seconds of single calls
        mod: list[tuple[float, float]] = []
        process = time.process_time()
        while len(ref) < 3 or time.perf_counter() - self.start < _WARMUP_SHARE * self.budget_s:
            ref.append(_both_clocks(self.reference, self.timer))
            mod.append(_both_clocks(self.model, self.timer))
        process = time.process_time() - process
        if self.clock == "thread":
            on_thread = sum(c for _, c in ref + mod) >= _ON_THREAD * process
            if on_thread:
                self.timer = _thread_timer
            else:
                self.clock = "wall"
        col = 1 if self.clock == "thread" else 0
        # The first call of each side may include one-off work (allocations, lazy init).
        if block_s is None:
            rounds = max_rounds or _ROUNDS_PER_BUDGET
            block_s = max(MIN_BLOCK_S, (1 - _WARMUP_SHARE) * self.budget_s / (4 * rounds))
        self.reference_calls = max(1, math.ceil(block_s / max(statistics.median(t[col] for t in ref[1:]), 1e-7)))
        self.model_calls = max(1, math.ceil(block_s / max(statistics.median(t[col] for t in mod[1:]), 1e-7)))

    def _round(self, reference_first: bool) -> None:
        ref, nr = self.reference, self.reference_calls
        mod, nm = self.model, self.model_calls
        if reference_first:
            t_ref = self.timer(ref, nr)
            t_mod = self.timer(mod, nm) + self.timer(mod, nm)
            t_ref += self.timer(ref, nr)
        else:
            t_mod = self.timer(mod, nm)
            t_ref = self.timer(ref, nr) + self.timer(ref, nr)
            t_mod += self.timer(mod, nm)
        ref_s, mod_s = t_ref / (2 * nr), t_mod / (2 * nm)
        self.reference_s.append(ref_s)
        self.model_s.append(mod_s)
        self.ratios.append(ref_s / mod_s if mod_s > 0 else math.inf)

    def run(self, rel_tol: float, min_rounds: int, max_rounds: int | None, block_s: float | None) -> None:
        self._warm_up(max_rounds, block_s)
        deadline = self.start + self.budget_s
        while True:
            self._round(reference_first=len(self.ratios) % 2 == 0)
            n = len(self.ratios)
            if max_rounds is not None and n >= max_rounds:
                return
            if n >= 3 and time.perf_counter() >= deadline:
                return
            if n >= min_rounds and _converged(self.ratios, rel_tol):
                return


def measure_speedup(
    model: nn.Module,
    reference: nn.Module,
    example_inputs: Any,
    *,
    target: str | Target = "cpu",
    budget_s: float = 2.0,
    rel_tol: float = 0.02,
    min_rounds: int = 8,
    max_rounds: int | None = None,
    lock: bool = True,
    lock_path: Any = None,
    clock: str = "auto",
    block_s: float | None = None,
) -> Speedup:
    """How many times faster ``model`` runs than ``reference``, timed in alternation.

    Both are prepared by the target's backend and timed in ABBA rounds under the
    measurement lock; the ratio is the median over rounds with a 95% interval, and the
    measurement stops when that interval is within ``+-rel_tol`` or the budget is spent
    (see the module docs and :class:`SpeedupMeter`, which keeps the reference prepared for
    many models).

    Example:
        >>> import autoprune as ap
        >>> from autoprune.testing import models as zoo
        >>> model, x = zoo.get_model("cnn")
        >>> s = ap.measure_speedup(model, model, x, target="cpu:threads=1", budget_s=0.3)
        >>> s.rounds >= 3
        True
    """
    meter = SpeedupMeter(reference, example_inputs, target)
    return meter.measure(
        model,
        budget_s=budget_s,
        rel_tol=rel_tol,
        min_rounds=min_rounds,
        max_rounds=max_rounds,
        lock=lock,
        lock_path=lock_path,
        clock=clock,
        block_s=block_s,
    )
