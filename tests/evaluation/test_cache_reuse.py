"""A cached timing is reused only when it is as tight as asked now (issue #29, item 4).

The latency cache without a meter (``ap.evaluate`` without a reference) stores when and where
a latency was measured and reuses it only when its spread is within ``max_spread``; a meter's
reference time is its own first measurement's. Timings here come from fakes (a scripted
``measure_latency``, scripted rounds), so every check is on exact values, never on a clock.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune.evaluation import (
    LatencyCache,
    LatencyResult,
    SpeedupMeter,
    _evaluate,
    architecture_signature,
    measure_latency,
)
from autoprune.evaluation import _speedup as speedup_module
from autoprune.testing import models as zoo

TARGET = "cpu:threads=1"
X = torch.randn(2, 8)


def _dated(median_ms: float, spread: float) -> LatencyResult:
    return LatencyResult(median_ms, spread, 12, 0.1, 0.0, 4, "2026-12-03T07:00:00+00:00", socket.gethostname())


class _Scripted:
    """``measure_latency`` answering from a script of (median_ms, spread); it records what it was asked."""

    def __init__(self, script: list[tuple[float, float]]) -> None:
        self.script = list(script)
        self.asked: list[dict[str, Any]] = []

    def __call__(self, model: nn.Module, inputs: Any, target: Any, **kwargs: Any) -> LatencyResult:
        self.asked.append(kwargs)
        median_ms, spread = self.script.pop(0)
        return _dated(median_ms, spread)


def _evaluate_latency(cache: LatencyCache, **kwargs: Any) -> ap.Metrics:
    return ap.evaluate(nn.Linear(8, 4), X, target=TARGET, cache=cache, time_budget_s=0.05, **kwargs)


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_cached_latency_is_reused_only_within_the_spread_asked_now(
    on_disk: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = _Scripted([(2.0, 0.01), (9.0, 0.04)])
    monkeypatch.setattr(_evaluate, "_measure_latency", scripted)
    cache = LatencyCache(tmp_path / "c.sqlite" if on_disk else None)
    key = architecture_signature(nn.Linear(8, 4), TARGET, X)
    cache.put(key, _dated(5.0, 0.03))

    hit = _evaluate_latency(cache, max_spread=0.05)  # 3% within 5%: reused
    assert hit.latency_cached and hit.latency_ms == 5.0 and scripted.asked == []

    fresh = _evaluate_latency(cache, max_spread=0.02)  # 3% is wider than 2%: measured again
    assert not fresh.latency_cached and fresh.latency_ms == 2.0 and fresh.latency_spread == 0.01
    assert scripted.asked[-1]["max_spread"] == 0.02  # the measurement aims at the spread asked
    assert cache.get(key) == _dated(2.0, 0.01)  # the narrower one replaced it

    again = _evaluate_latency(cache, max_spread=0.005)  # 1% wider than 0.5%: measured, 4% comes back
    assert not again.latency_cached and again.latency_ms == 9.0
    assert cache.get(key) == _dated(2.0, 0.01)  # the cache keeps the narrower of the two
    assert _evaluate_latency(cache, max_spread=0.01).latency_ms == 2.0  # and it is reused at 1%
    assert len(scripted.asked) == 2


def _old_row(path: Path, key: str, row: dict[str, Any]) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT OR REPLACE INTO latency (key, host, result) VALUES (?, ?, ?)", (key, socket.gethostname(), json.dumps(row))
        )
    db.close()


def test_an_entry_without_a_date_is_measured_again_and_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # stored by an earlier version: no date, no host, a spread nobody checked
    path = tmp_path / "old.sqlite"
    cache = LatencyCache(path)
    key = architecture_signature(nn.Linear(8, 4), TARGET, X)
    old = {"median_ms": 1.0, "spread": 0.001, "repeats": 10, "seconds": 0.2, "wait_s": 0.0, "calls_per_repeat": 3}
    _old_row(path, key, old)
    entry = cache.get(key)
    assert entry is not None and entry.median_ms == 1.0 and entry.measured_at == "" and entry.host == ""

    scripted = _Scripted([(4.0, 0.04)])
    monkeypatch.setattr(_evaluate, "_measure_latency", scripted)
    m = _evaluate_latency(cache, max_spread=0.05)
    assert not m.latency_cached and m.latency_ms == 4.0  # narrow as it looks, it is not trusted
    assert cache.get(key) == _dated(4.0, 0.04)  # and a dated entry replaces it, though wider
    assert _evaluate_latency(cache, max_spread=0.05).latency_cached

    # a row written by a later version, with a field this one does not know, still reads
    _old_row(path, key, {**_dated(3.0, 0.01)._asdict(), "from_the_future": 1})
    assert cache.get(key) == _dated(3.0, 0.01)


def test_measure_latency_records_when_and_where() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    result = measure_latency(nn.Linear(8, 4), X, TARGET, time_budget_s=0.02, lock=False)
    when = datetime.fromisoformat(result.measured_at)
    assert when.tzinfo is not None and before <= when <= datetime.now(UTC) + timedelta(seconds=1)
    assert result.host == socket.gethostname()


# ---------------------------------------------------------------------------- the meter's reference
class _Rounds:
    """Rounds from a script: each measurement takes the next (reference ms, model ms) pair."""

    script: list[tuple[float, float]] = []
    started = 0

    def __init__(self, reference: Any, model: Any, target: Any, budget_s: float, clock: str) -> None:
        self.clock, self.reference_calls, self.model_calls = clock, 1, 1
        self.ratios: list[float] = []
        self.model_s: list[float] = []
        self.reference_s: list[float] = []

    def run(self, *args: Any) -> None:
        type(self).started += 1
        reference_ms, model_ms = type(self).script.pop(0)
        self.reference_s = [reference_ms / 1e3] * 8
        self.model_s = [model_ms / 1e3] * 8
        self.ratios = [reference_ms / model_ms] * 8


@pytest.fixture
def scripted_rounds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[_Rounds]:
    monkeypatch.setattr(speedup_module, "_Rounds", _Rounds)
    monkeypatch.setenv("AUTOPRUNE_LATENCY_LOCK", str(tmp_path / "lock"))
    _Rounds.script, _Rounds.started = [], 0
    return _Rounds


def test_the_meters_reference_time_is_its_first_measurements(scripted_rounds: type[_Rounds]) -> None:
    model, x = zoo.get_model("cnn", batch_size=2)
    meter = SpeedupMeter(model, x, TARGET)
    assert meter.first_measurement is None
    scripted_rounds.script = [(3.0, 1.5), (5.0, 1.0)]
    first = meter.measure(model, budget_s=0.1)
    assert first.reference_ms == 3.0 and first.ratio == 2.0
    assert meter.reference_ms() == 3.0 and scripted_rounds.started == 1  # nothing timed for it
    later = meter.measure(model, budget_s=0.1)
    assert later.reference_ms == 5.0
    assert meter.reference_ms() == 3.0 and meter.first_measurement is first  # one number for the meter's life


def test_a_meter_that_measured_nothing_times_its_reference_once(scripted_rounds: type[_Rounds]) -> None:
    model, x = zoo.get_model("cnn", batch_size=2)
    meter = SpeedupMeter(model, x, TARGET)
    scripted_rounds.script = [(4.0, 4.0), (7.0, 1.0)]
    assert meter.reference_ms(budget_s=0.1) == 4.0 and scripted_rounds.started == 1
    assert meter.reference_ms(budget_s=0.1) == 4.0 and scripted_rounds.started == 1
    assert meter.measure(model, budget_s=0.1).reference_ms == 7.0
    assert meter.reference_ms() == 4.0
