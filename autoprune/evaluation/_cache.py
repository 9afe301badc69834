"""The latency cache: structurally identical models are measured once per machine.

Unstructured pruning leaves every shape as it is, and dense kernels do not care about zeros,
so many trials of a search share an architecture. The cache key is
:func:`architecture_signature`; the cache is in-process (a dict) or a SQLite file that the
workers of a study share.

It holds latencies (:class:`LatencyResult`, with their spread, when and where they were
measured) and speedups (:class:`Speedup`, with their interval). A speedup's key
(:func:`speedup_key`) names the model's architecture, the reference's, the target (device,
backend, threads, batch, dtype) and the budget. An entry is reused only when it is as tight
as asked now, and measured again otherwise: a speedup when its interval lies within the
``rel_tol`` asked (:func:`cached_speedup`), a latency when its relative interquartile range
is within the ``max_spread`` asked (:func:`reusable_latency`, read by
:func:`~autoprune.evaluate`). Of the two, the tighter is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from torch import nn

from autoprune.evaluation._latency import LatencyResult
from autoprune.evaluation._signature import architecture_signature
from autoprune.evaluation._speedup import Speedup, SpeedupMeter

__all__ = ["LatencyCache", "architecture_signature", "cached_speedup", "reusable_latency", "speedup_key"]  # the signature: re-exported


class LatencyCache:
    """Latency results keyed by :func:`architecture_signature`.

    Args:
        path: ``None`` keeps results in this process (a dict). A path keeps them in a SQLite
            file that several processes (the workers of a study) read and write at once;
            SQLite's own locking makes concurrent writers safe. Pass the path, not the
            object, to other processes if they should share it.
        host: entries are scoped to the machine that measured them, so a file on a shared
            disk never hands one machine's latency to another. Default: this host's name.

    Example:
        >>> cache = LatencyCache()
        >>> cache.get("abc") is None
        True
        >>> cache.put("abc", LatencyResult(1.5, 0.01, 10, 0.3))
        >>> cache.get("abc").median_ms
        1.5
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, host: str | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.host = host if host is not None else socket.gethostname()
        self._memory: dict[str, LatencyResult] = {}
        self._speedups: dict[str, Speedup] = {}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                for table in ("latency", "speedup"):
                    db.execute(
                        f"CREATE TABLE IF NOT EXISTS {table} "
                        "(key TEXT NOT NULL, host TEXT NOT NULL, result TEXT NOT NULL, PRIMARY KEY (key, host))"
                    )

    def __repr__(self) -> str:
        return f"LatencyCache({str(self.path) if self.path else None!r}, host={self.host!r})"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per call: cheap, and safe across fork and threads.
        assert self.path is not None
        db = sqlite3.connect(self.path, timeout=60.0)
        try:
            with db:  # commits, or rolls back on error
                yield db
        finally:
            db.close()

    def _read(self, table: str, key: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute(f"SELECT result FROM {table} WHERE key = ? AND host = ?", (key, self.host)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def _write(self, table: str, key: str, value: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                f"INSERT OR REPLACE INTO {table} (key, host, result) VALUES (?, ?, ?)",
                (key, self.host, json.dumps(value)),
            )

    def get(self, key: str) -> LatencyResult | None:
        """The stored result for ``key`` on this host, or None."""
        if self.path is None:
            return self._memory.get(key)
        row = self._read("latency", key)
        # Only the fields this version knows: an entry from an older version lacks the
        # newer ones (their defaults say "unknown"), one from a newer version may add some.
        return None if row is None else LatencyResult(**{k: v for k, v in row.items() if k in LatencyResult._fields})

    def put(self, key: str, result: LatencyResult) -> None:
        """Store ``result`` for ``key`` on this host (a later put replaces it)."""
        result = LatencyResult(*result)
        if self.path is None:
            self._memory[key] = result
        else:
            self._write("latency", key, result._asdict())

    def get_speedup(self, key: str) -> Speedup | None:
        """The stored speedup for ``key`` (see :func:`speedup_key`) on this host, or None."""
        if self.path is None:
            return self._speedups.get(key)
        row = self._read("speedup", key)
        return None if row is None else Speedup.from_dict(row)

    def put_speedup(self, key: str, result: Speedup) -> None:
        """Store a speedup for ``key`` on this host (a later put replaces it)."""
        if self.path is None:
            self._speedups[key] = result
        else:
            self._write("speedup", key, result.as_dict())

    def __len__(self) -> int:
        if self.path is None:
            return len(self._memory)
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM latency WHERE host = ?", (self.host,)).fetchone()[0])


def speedup_key(model: nn.Module, meter: SpeedupMeter, budget_s: float) -> str:
    """The cache key of ``model``'s speedup against ``meter``'s reference: both architecture
    signatures (which include the target's device, backend, threads, batch and dtype) and
    the time budget."""
    model_signature = architecture_signature(model, meter.target, meter.example_inputs)
    text = f"speedup;model={model_signature};reference={meter.reference_signature};budget={float(budget_s)!r}"
    return hashlib.sha256(text.encode()).hexdigest()


WIDE_INTERVAL = 0.1  # a speedup whose 95% interval reaches 10% from it is measured again, if allowed


def cached_speedup(
    meter: SpeedupMeter,
    model: nn.Module,
    cache: LatencyCache | None,
    *,
    budget_s: float = 2.0,
    rel_tol: float = 0.02,
    around: Callable[[], AbstractContextManager[object]] | None = None,
    max_budget_s: float | None = None,
    **measure_options: Any,
) -> Speedup:
    """``meter.measure(model)``, unless the cache holds a tight enough entry for it.

    An entry is reused (returned with ``cached=True``) only when its interval lies within
    ``+-rel_tol`` of its ratio; a wider one (a measurement that did not converge, or one
    asked with a looser tolerance) is measured again. Of the two, the one with the narrower
    interval is kept in the cache; the fresh measurement is returned.

    Args:
        meter: the prepared reference.
        model: the model to time.
        cache: where entries live (None: always measure).
        budget_s: time budget of a measurement (part of the key).
        rel_tol: the relative half-width an entry must have to be reused, and the one a new
            measurement aims for.
        around: a context manager factory entered around a measurement (not a cache hit).
        max_budget_s: when a measurement ends wider than +-``WIDE_INTERVAL`` (a loaded
            machine: few, scattered rounds), measure again with twice the budget, then twice
            that, until one is narrower or ``max_budget_s`` in all is spent; the narrowest is
            returned. None (the default): ``budget_s``, one measurement.
        **measure_options: passed to :meth:`SpeedupMeter.measure` (``lock``, ``min_rounds``, ...).

    Example:
        >>> import autoprune as ap
        >>> from autoprune.testing import models as zoo
        >>> model, x = zoo.get_model("cnn")
        >>> meter, cache = ap.SpeedupMeter(model, x, "cpu:threads=1"), LatencyCache()
        >>> first = cached_speedup(meter, model, cache, budget_s=0.3, rel_tol=0.5)
        >>> cached_speedup(meter, model, cache, budget_s=0.3, rel_tol=0.5).cached
        True
    """
    key = speedup_key(model, meter, budget_s) if cache is not None else ""
    stored = cache.get_speedup(key) if cache is not None else None
    if stored is not None and stored.rel_halfwidth <= rel_tol:
        return dataclasses.replace(stored, cached=True)
    limit = budget_s if max_budget_s is None else max(budget_s, max_budget_s)
    with around() if around is not None else contextlib.nullcontext():
        fresh = meter.measure(model, budget_s=budget_s, rel_tol=rel_tol, **measure_options)
        spent, step = budget_s, budget_s
        while fresh.rel_halfwidth > max(WIDE_INTERVAL, rel_tol) and spent < limit:
            step = min(2 * step, limit - spent)
            again = meter.measure(model, budget_s=step, rel_tol=rel_tol, **measure_options)
            spent += step
            if again.rel_halfwidth <= fresh.rel_halfwidth:
                fresh = again
    if cache is None:
        return fresh
    if stored is None or fresh.rel_halfwidth <= stored.rel_halfwidth:
        cache.put_speedup(key, fresh)
    return fresh


def reusable_latency(entry: LatencyResult | None, max_spread: float) -> bool:
    """Whether a stored latency may stand for a measurement asked with ``max_spread``: it
    says when and where it was measured, and the relative interquartile range of its repeats
    (``spread``, ``(Q3 - Q1) / median``: what :func:`measure_latency` stops on) is at most
    ``max_spread``. An entry without a date (stored by an older version, with no check of its
    spread) counts as too wide."""
    return (
        entry is not None
        and bool(entry.measured_at)
        and math.isfinite(entry.spread)
        and 0 <= entry.spread <= max_spread
    )

