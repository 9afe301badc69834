"""A search's timings: reused only as tight as asked now, and scaled by the reference timed
where they ran (issue #29, item 4).

- the sensitivity scan reuses a cached speedup only within ``latency_rel_tol``;
- the full stage reuses the screen's timing only within ``latency_rel_tol``;
- every trial's ``latency_ms`` is its own process's reference latency over its speedup, and
  says which (``reference_latency_ms``, ``latency_host``), so two hosts' trials each carry
  the milliseconds their host measured.

The meter is a fake with scripted measurements (or the real one with scripted rounds): every
check is on exact values, never on a clock.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from torch import nn

import autoprune as ap
from autoprune._lock import MachineLock
from autoprune.config import SearchConfig
from autoprune.evaluation import LatencyCache, Speedup, SpeedupMeter, speedup_key
from autoprune.evaluation import _speedup as speedup_module
from autoprune.study._objective import Objective, SearchSetup, study_target

TINY = {"width": 8, "batch_size": 16}
TOL = 0.05


def _cfg(tmp_path: Path, **kw: object) -> SearchConfig:
    data: dict[str, object] = {
        "task": "digits",
        "task_options": dict(TINY),
        "trials": 2,
        "storage": f"sqlite:///{tmp_path}/s.db",
        "study": "t",
        "target": "cpu:threads=1",
        "latency_budget_s": 0.4,
        "latency_rel_tol": TOL,
        "latency_cache": "off",
        "reference_amounts": [],
        "report": False,
        "sensitivity": False,
        "screening": False,
        "space": {"fine_tune_steps": [0], "steps": [1, 1], "round_to": None},
    }
    data.update(kw)
    return SearchConfig.from_dict(data)


@pytest.fixture(scope="module")
def tiny_task():  # type: ignore[no-untyped-def]
    return ap.tasks.get_task("digits", **TINY)


def _speedup(ratio: float, halfwidth: float, reference_ms: float, target: str) -> Speedup:
    return Speedup(
        ratio=ratio,
        low=ratio * (1 - halfwidth),
        high=ratio * (1 + halfwidth),
        rounds=20,
        model_ms=reference_ms / ratio,
        reference_ms=reference_ms,
        converged=halfwidth <= TOL,
        target=target,
    )


class _FakeMeter:
    """The study's meter with scripted measurements (ratio, half-width, reference ms) and a
    fixed reference time of its own; what speedup_key reads comes from the real one."""

    def __init__(self, meter: SpeedupMeter, script: list[tuple[float, float, float]], reference_ms: float) -> None:
        self._meter, self.script = meter, list(script)
        self.budgets: list[float] = []
        self.target, self.own_ms = meter.target, reference_ms

    def measure(self, model: nn.Module, *, budget_s: float, rel_tol: float, **_: Any) -> Speedup:
        self.budgets.append(budget_s)
        return _speedup(*self.script.pop(0), target=str(self.target))

    def reference_ms(self, **_: Any) -> float:
        return self.own_ms

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meter, name)


def _objective(tmp_path: Path, task: ap.Task, unpruned: dict[str, Any] | None = None, **kw: object) -> Objective:
    cfg = _cfg(tmp_path, **kw)
    lock = MachineLock(str(tmp_path / "lock"))
    return Objective(SearchSetup.build(task, cfg, lock), unpruned, lock)


def _fake(objective: Objective, script: list[tuple[float, float, float]], reference_ms: float = 2.0) -> _FakeMeter:
    real = SpeedupMeter(objective.task.model, objective.task.example_inputs, study_target(objective.cfg))
    fake = _FakeMeter(real, script, reference_ms)
    objective._meter = fake  # type: ignore[assignment]
    return fake


BASELINE = {"accuracy": 90.0, "latency_ms": 1.0, "reference_latency_ms": 1.0, "dense_bytes": 1000, "sparse_bytes": 1000}


# ---------------------------------------------------------------------------- the scan
def test_the_scan_reuses_a_cached_speedup_only_within_the_tolerance(tmp_path: Path, tiny_task: ap.Task) -> None:
    objective = _objective(tmp_path, tiny_task)
    objective.cache = LatencyCache()
    meter = _fake(objective, [(1.3, 0.02, 2.0)])
    model = copy.deepcopy(tiny_task.model)
    key = speedup_key(model, meter, objective.cfg.latency_budget_s / 2)  # type: ignore[arg-type]
    objective.cache.put_speedup(key, _speedup(1.6, 0.30, 2.0, str(meter.target)))  # +-30%: wider than 5%

    assert objective._scan_speedup(model) == 1.3  # timed again
    assert meter.budgets == [0.2]  # with half a trial's budget
    stored = objective.cache.get_speedup(key)
    assert stored is not None and stored.ratio == 1.3  # the narrower one kept
    assert objective._scan_speedup(model) == 1.3 and meter.budgets == [0.2]  # within 5% now: reused


# ---------------------------------------------------------------------------- the screen's hand-over
@pytest.mark.parametrize(("halfwidth", "reused"), [(0.01, True), (0.04, True), (0.2, False)])
def test_the_screens_timing_is_handed_over_only_within_the_tolerance(
    tmp_path: Path, tiny_task: ap.Task, halfwidth: float, reused: bool
) -> None:
    objective = _objective(tmp_path, tiny_task, dict(BASELINE))
    meter = _fake(objective, [(2.0, 0.01, 2.0)])
    pruned = copy.deepcopy(tiny_task.model)
    screened = _speedup(1.5, halfwidth, 2.0, str(meter.target))
    key = speedup_key(pruned, meter, objective.cfg.latency_budget_s)  # type: ignore[arg-type]
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()

    metrics = objective.measure(trial, pruned, (key, screened))
    if reused:
        assert metrics["speedup"] == 1.5 and meter.budgets == []
        assert metrics["speedup_low"] == screened.low and trial.user_attrs["latency_from_screen"] is True
    else:  # +-20% when 5% was asked: measured again
        assert metrics["speedup"] == 2.0 and meter.budgets == [objective.cfg.latency_budget_s]
        assert "latency_from_screen" not in trial.user_attrs


# ---------------------------------------------------------------------------- each host its own reference
def test_each_host_scales_its_trials_by_its_own_reference(tmp_path: Path, tiny_task: ap.Task) -> None:
    # Two workers of one study on two hosts: the study's unpruned was timed elsewhere (1 ms);
    # each host times the unpruned model itself (2 ms here, 5 ms there) and both measure 2x.
    study = optuna.create_study(directions=["maximize", "minimize"])
    got = {}
    for host, own_ms in (("host-a", 2.0), ("host-b", 5.0)):
        objective = _objective(tmp_path, tiny_task, dict(BASELINE), constraints={"max_latency_ms": 2.0})
        objective.host = host
        _fake(objective, [(2.0, 0.01, 9.0)], reference_ms=own_ms)  # the rounds' reference: 9 ms
        trial = study.ask()
        values = objective.record(trial, objective.measure(trial, copy.deepcopy(tiny_task.model)))
        study.tell(trial, values)
        got[host] = study.trials[-1]
    a, b = got["host-a"].user_attrs, got["host-b"].user_attrs
    assert (a["latency_ms"], b["latency_ms"]) == (1.0, 2.5)  # own reference over the same 2x
    assert (a["reference_latency_ms"], b["reference_latency_ms"]) == (2.0, 5.0)
    assert (a["latency_host"], b["latency_host"]) == ("host-a", "host-b")
    assert a["measured_reference_ms"] == b["measured_reference_ms"] == 9.0  # the rounds' own, kept apart
    assert a["speedup"] == b["speedup"] == 2.0
    # the latency limit holds each trial to what its host measured: 1 ms passes, 2.5 ms does not
    assert got["host-a"].constraints["latency_ms"] == pytest.approx(-1.0) and a["feasible"] is True
    assert got["host-b"].constraints["latency_ms"] == pytest.approx(0.5) and b["feasible"] is False
    assert got["host-b"].values[1] == 2.5


class _Rounds:
    """Rounds from a script: each measurement takes the next (reference ms, model ms) pair."""

    script: list[tuple[float, float]] = []

    def __init__(self, reference: Any, model: Any, target: Any, budget_s: float, clock: str) -> None:
        self.clock, self.reference_calls, self.model_calls = clock, 1, 1
        self.ratios: list[float] = []
        self.model_s: list[float] = []
        self.reference_s: list[float] = []

    def run(self, *args: Any) -> None:
        reference_ms, model_ms = type(self).script.pop(0)
        self.reference_s, self.model_s = [reference_ms / 1e3] * 8, [model_ms / 1e3] * 8
        self.ratios = [reference_ms / model_ms] * 8


def test_a_cached_speedup_is_scaled_by_the_reference_timed_in_this_process(
    tmp_path: Path, tiny_task: ap.Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cache hands over a speedup timed in an earlier sitting, when the reference took 9 ms;
    # this process has timed nothing yet, so it times the unpruned model now (3 ms) and scales by that.
    monkeypatch.setattr(speedup_module, "_Rounds", _Rounds)
    monkeypatch.setenv("AUTOPRUNE_LATENCY_LOCK", str(tmp_path / "measure.lock"))
    _Rounds.script = [(3.0, 3.0), (4.0, 1.0)]
    objective = _objective(tmp_path, tiny_task, dict(BASELINE))
    objective.cache = LatencyCache()
    pruned = copy.deepcopy(tiny_task.model)
    key = speedup_key(pruned, objective.meter, objective.cfg.latency_budget_s)
    objective.cache.put_speedup(key, _speedup(2.0, 0.01, 9.0, str(objective.meter.target)))
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()

    metrics = objective.measure(trial, pruned)
    assert metrics["latency_cached"] and metrics["speedup"] == 2.0
    assert metrics["reference_latency_ms"] == 3.0 and metrics["latency_ms"] == 1.5
    assert metrics["measured_reference_ms"] == 9.0 and metrics["latency_host"] == objective.host
    # a later trial of this process keeps the same reference time (drift between trials cancels)
    other = nn.Sequential(copy.deepcopy(tiny_task.model))  # another architecture: measured, 4x
    metrics = objective.measure(optuna.create_study(directions=["maximize", "minimize"]).ask(), other)
    assert metrics["speedup"] == 4.0 and metrics["reference_latency_ms"] == 3.0 and metrics["latency_ms"] == 0.75
    assert not math.isnan(metrics["measured_latency_ms"]) and _Rounds.script == []


@pytest.mark.slow
def test_a_search_scales_every_trial_by_one_reference_time_of_its_sitting(tmp_path: Path, tiny_task: ap.Task) -> None:
    from autoprune.study import run_search

    cfg = _cfg(tmp_path, trials=3, reference_amounts=[0.5], latency_budget_s=0.05, latency_rel_tol=0.5)
    study = run_search(cfg, tiny_task)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 3
    references = {t.user_attrs["reference_latency_ms"] for t in done}
    assert len(references) == 1  # one worker, one sitting: one reference time for every trial
    assert study.user_attrs["unpruned"]["reference_latency_ms"] in references
    for t in done:
        assert t.user_attrs["latency_host"] == t.user_attrs["host"]
        assert t.user_attrs["latency_ms"] == t.user_attrs["reference_latency_ms"] / t.user_attrs["speedup"]
        assert t.values[1] == t.user_attrs["latency_ms"]
