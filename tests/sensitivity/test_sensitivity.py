"""Sensitivity scan, greedy allocation under a MACs target, warm-start params, screening."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import optuna
import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune.config import SpaceConfig
from autoprune.evaluation import count_macs
from autoprune.sensitivity import (
    Curve,
    Sensitivity,
    allocate,
    allocations,
    greedy_path,
    macs_meter,
    scan_sensitivity,
    schedule_alone,
    screen,
    sensitivity_allocations,
)
from autoprune.space import SearchSpace

AMOUNTS = (0.25, 0.5, 0.75)


def _calibrate(x: torch.Tensor) -> Any:
    """BatchNorm statistics re-estimated on ``x`` (what Task.calibrate does on training batches)."""

    @torch.no_grad()
    def calibrate(model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        model(x)
        model.eval()

    return calibrate


@pytest.fixture(scope="module")
def scanned(digits_task: ap.Task) -> tuple[SearchSpace, Sensitivity, dict[str, int]]:
    model, x = digits_task.model, digits_task.example_inputs
    space = SearchSpace(ap.prunable_layers(model, x), SpaceConfig(fine_tune_steps=[0, 25, 50, 100], round_to=None, fine_tune_per_trial=False))
    calls = {"calibrate": 0, "evaluate": 0, "speedup": 0}
    calibrate = _calibrate(x)

    def counted_calibrate(m: nn.Module) -> None:
        calls["calibrate"] += 1
        calibrate(m)

    def counted_evaluate(m: nn.Module) -> float:
        calls["evaluate"] += 1
        return digits_task.evaluate(m)

    def fake_speedup(m: nn.Module) -> float:
        calls["speedup"] += 1
        return count_macs(model, x) / count_macs(m, x)  # a stand-in proportional to MACs

    sens = scan_sensitivity(
        model, x, space, evaluate=counted_evaluate, calibrate=counted_calibrate, speedup=fake_speedup, amounts=AMOUNTS
    )
    return space, sens, calls


def test_scan_covers_every_unit_once_per_amount(
    scanned: tuple[SearchSpace, Sensitivity, dict[str, int]], digits_task: ap.Task
) -> None:
    space, sens, calls = scanned
    assert sens.unpruned_score == digits_task.evaluate(digits_task.model)
    assert sens.units == [u.key for u in space.units]
    structured = [u.key for u in space.units if u.supports("structured")]
    assert [c.unit for c in sens.curves if c.method == "structured"] == structured
    # the output layer: no structured entry, accuracy only
    assert sens.curve("classifier.3") is None
    out = sens.curve("classifier.3", "unstructured")
    assert out is not None and out.macs_removed == (0, 0, 0) and out.speedups is None and len(out.scores) == 3
    n_points = sum(len(c.amounts) for c in sens.curves)
    assert n_points == 3 * len(space.units)
    assert calls["calibrate"] == n_points + 1  # each point once, plus the unpruned reference
    assert calls["evaluate"] == n_points + 2  # plus the unpruned model, as is and calibrated
    assert calls["speedup"] == 3 * len(structured)
    assert sens.calibrated and sens.seconds > 0


def test_macs_removed_are_exact(scanned: tuple[SearchSpace, Sensitivity, dict[str, int]], digits_task: ap.Task) -> None:
    space, sens, _ = scanned
    model, x = digits_task.model, digits_task.example_inputs
    base = count_macs(model, x)
    assert sens.unpruned_macs == base
    for curve in sens.curves:
        if curve.method != "structured":
            continue
        for amount, removed in zip(curve.amounts, curve.macs_removed, strict=True):
            pruned = ap.apply_schedule(model, schedule_alone(space, curve.unit, amount), example_inputs=x)
            assert removed == base - count_macs(pruned, x)
        assert list(curve.macs_removed) == sorted(set(curve.macs_removed))  # strictly more with the amount
        assert curve.speedups is not None
        assert curve.speedups == pytest.approx([base / (base - r) for r in curve.macs_removed])


def test_each_score_is_the_unit_pruned_alone_and_calibrated(
    scanned: tuple[SearchSpace, Sensitivity, dict[str, int]], digits_task: ap.Task
) -> None:
    # Every point, computed again by hand: the unit alone at that amount, BatchNorm
    # re-estimated, scored on validation. Same process and seed: equal to the last bit.
    space, sens, _ = scanned
    model, x = digits_task.model, digits_task.example_inputs
    calibrate = _calibrate(x)
    unpruned = copy.deepcopy(model)
    calibrate(unpruned)
    assert sens.reference_score == digits_task.evaluate(unpruned.eval())
    for curve in sens.curves:
        assert curve.amounts == AMOUNTS  # digits' units all allow 75%
        for amount, score in zip(curve.amounts, curve.scores, strict=True):
            pruned = ap.apply_schedule(model, schedule_alone(space, curve.unit, amount, curve.method), example_inputs=x)
            calibrate(pruned)
            assert score == digits_task.evaluate(pruned.eval()), (curve.unit, amount)
    # The scores vary with the amount (a scan that pruned one amount three times would not):
    # on digits, 75% of a layer's channels costs more than 25% on average, and a real drop.
    structured = [c for c in sens.curves if c.method == "structured"]
    mean = [sum(c.scores[i] for c in structured) / len(structured) for i in range(3)]
    assert mean[0] > mean[1] > mean[2] and sens.reference_score - mean[2] > 5.0


def test_drop_at_interpolates_the_scanned_drops() -> None:
    # 0.25 scores above the reference (no drop), 0.75 above 0.5 (noise: the drop stays at
    # 0.5's, the curve never falls); in between, on the line through the neighbours.
    curve = Curve(unit="u", method="structured", amounts=(0.25, 0.5, 0.75), scores=(91.0, 80.0, 84.0),
                  macs_removed=(10, 20, 30), speedups=None)  # fmt: skip
    sens = Sensitivity(
        curves=(curve,), unpruned_score=89.0, reference_score=90.0, unpruned_macs=100, seconds=0.0, calibrated=True
    )
    at = {a: sens.drop_at("u", a) for a in (0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9)}
    assert at == pytest.approx({0.0: 0.0, 0.1: 0.0, 0.25: 0.0, 0.4: 6.0, 0.5: 10.0, 0.6: 10.0, 0.75: 10.0, 0.9: 10.0})


def test_json_round_trip_and_table(scanned: tuple[SearchSpace, Sensitivity, dict[str, int]]) -> None:
    _, sens, _ = scanned
    back = Sensitivity.from_dict(json.loads(json.dumps(sens.to_dict())))
    assert back == sens
    table = sens.table()
    assert len(table) == sum(len(c.amounts) for c in sens.curves)
    assert list(table.columns) == [
        "unit", "method", "amount", "score", "drop", "macs_removed", "macs_fraction", "speedup"
    ]  # fmt: skip
    row = table[(table.unit == "features.3") & (table.amount == 0.5)].iloc[0]
    curve = sens.curve("features.3")
    assert curve is not None
    assert row.score == curve.scores[1] and row.macs_removed == curve.macs_removed[1]
    assert row.macs_fraction == pytest.approx(curve.macs_removed[1] / sens.unpruned_macs)
    assert table[table.method == "unstructured"].speedup.isna().all()
    with pytest.raises(ap.ScheduleError, match="version"):
        Sensitivity.from_dict({**sens.to_dict(), "version": 9})


def test_scan_rejects_bad_amounts(digits_task: ap.Task) -> None:
    layers = ap.prunable_layers(digits_task.model, digits_task.example_inputs)
    with pytest.raises(ap.ScheduleError, match=r"0 < amount < 1.*\[0.5, 1.0\]"):
        scan_sensitivity(
            digits_task.model, digits_task.example_inputs, layers, evaluate=digits_task.evaluate, amounts=(0.5, 1.0)
        )


def test_scan_caps_amounts_at_the_units_safe_maximum(grouped_net: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = grouped_net
    layers = ap.prunable_layers(model, x)
    sens = scan_sensitivity(model, x, layers, evaluate=lambda m: 0.0, amounts=(0.5, 0.95))
    b = sens.curve("b")  # 32 channels in 4 groups: at most 0.875 keeps one per group
    assert b is not None and b.amounts == (0.5, 0.85)  # the space's grid below the safe maximum


# ---------------------------------------------------------------------------- allocation
def _synthetic() -> Sensitivity:
    # "a" is the most sensitive and saves the most MACs; "c" is cheap and saves little
    return Sensitivity(
        curves=(
            Curve("a", "structured", (0.25, 0.5, 0.75), (95.0, 80.0, 40.0), (100, 200, 300)),
            Curve("b", "structured", (0.25, 0.5, 0.75), (99.5, 98.0, 90.0), (60, 120, 180)),
            Curve("c", "structured", (0.25, 0.5, 0.75), (100.0, 99.9, 99.0), (20, 40, 60)),
            Curve("out", "unstructured", (0.25, 0.5, 0.75), (100.0, 99.0, 90.0), (0, 0, 0)),
        ),
        unpruned_score=100.0,
        reference_score=100.0,
        unpruned_macs=1000,
        seconds=0.0,
        calibrated=True,
    )


@pytest.mark.parametrize("target", [0.05, 0.1, 0.2, 0.3, 0.4, 0.5])
def test_allocation_reaches_the_target_with_less_on_the_sensitive_unit(target: float) -> None:
    sens = _synthetic()
    amounts = allocate(sens, target, step=0.05)
    assert set(amounts) == {"a", "b", "c"}  # unstructured-only units save no MACs
    saved = sens.saved_fraction(amounts)
    assert target <= saved < target + 0.02  # one step of the largest unit at most
    assert amounts["a"] <= amounts["b"] <= amounts["c"]
    uniform = next(u / 20 for u in range(1, 16) if sens.saved_fraction(dict.fromkeys("abc", u / 20)) >= target)
    greedy_drop = sum(sens.drop_at(u, a) for u, a in amounts.items())
    assert greedy_drop <= sum(sens.drop_at(u, uniform) for u in "abc")  # never worse than uniform (estimate)


def test_greedy_path_is_monotone_and_ends_at_the_caps() -> None:
    sens = _synthetic()
    path = greedy_path(sens, caps={"a": 0.5, "b": 0.75, "c": 0.75, "zzz": 0.5}, step=0.25)
    assert path[0] == {"a": 0.0, "b": 0.0, "c": 0.0} and path[-1] == {"a": 0.5, "b": 0.75, "c": 0.75}
    for before, after in zip(path, path[1:], strict=False):
        assert sum(after[u] > before[u] for u in after) == 1 and all(after[u] >= before[u] for u in after)
    # the exact greedy order: the least drop per MAC saved first (c, then b, ...)
    assert path[1] == {"a": 0.0, "b": 0.0, "c": 0.25}
    series = allocations(sens, (0.1, 0.2, 0.3))
    assert all(series[i][u] <= series[i + 1][u] for i in range(2) for u in "abc")
    assert allocate(sens, 0.99) == {"a": 0.75, "b": 0.75, "c": 0.75}  # out of reach: everything at its cap
    assert allocate(sens, 0.0) == {"a": 0.0, "b": 0.0, "c": 0.0}
    with pytest.raises(ap.ScheduleError, match="target=1.5"):
        allocate(sens, 1.5)


def test_the_latency_path_ranks_by_time_saved_and_puts_untimed_savings_last() -> None:
    base = _synthetic()
    speedups = {"a": (2.0, 3.0, 4.0), "b": (1.01, 1.02, 1.03), "c": (1.0, 1.0, 0.99)}  # c: no time to save
    sens = dataclasses.replace(base, curves=tuple(
        dataclasses.replace(c, speedups=speedups[c.unit]) if c.method == "structured" else c for c in base.curves
    ))  # fmt: skip
    assert base.path_resource == "macs" and sens.path_resource == "latency"
    assert greedy_path(sens, step=0.25)[1] == {"a": 0.0, "b": 0.0, "c": 0.25}  # by MACs: c first (no drop)
    path = greedy_path(sens, resource="latency", step=0.25)
    # a loses 5 points for half the time; b 0.5 points for 1%: a first, c (nothing timed) last
    assert path[1] == {"a": 0.25, "b": 0.0, "c": 0.0}
    first_c = next(i for i, amounts in enumerate(path) if amounts["c"] > 0)
    assert path[first_c - 1] == {"a": 0.75, "b": 0.75, "c": 0.0}
    assert path[-1] == {"a": 0.75, "b": 0.75, "c": 0.75}  # still reaches every cap
    # a first point that saved no measurable time, below one that did, lies on the line to it
    noisy = dataclasses.replace(sens, curves=(dataclasses.replace(sens.curves[0], speedups=(0.98, 1.1, 1.3)),))
    assert noisy.saved_at("a", 0.25, "latency") == pytest.approx((1 - 1 / 1.1) / 2)
    assert noisy.saved_at("a", 0.75, "latency") == pytest.approx(1 - 1 / 1.3)
    # the target is whatever `measure` counts: here the MACs estimate along the latency path
    amounts = allocate(sens, 0.3, resource="latency", step=0.25, measure=sens.saved_fraction)
    assert amounts == next(a for a in path if sens.saved_fraction(a) >= 0.3 - 1e-9)


def test_latency_allocation_needs_speedups() -> None:
    with pytest.raises(ap.ScheduleError, match="speedup"):
        allocate(_synthetic(), 0.2, resource="latency")
    with pytest.raises(ap.ScheduleError, match="resource='flops'"):
        allocate(_synthetic(), 0.2, resource="flops")


def test_measured_allocation_reaches_the_real_macs_target(
    scanned: tuple[SearchSpace, Sensitivity, dict[str, int]], digits_task: ap.Task
) -> None:
    space, sens, _ = scanned
    model, x = digits_task.model, digits_task.example_inputs
    meter = macs_meter(model, x, space)
    step = space.config.amount_step
    for target in (0.3, 0.6):
        amounts = allocate(sens, target, measure=meter, step=step)
        real = meter(amounts)
        assert real >= target
        # the allocation one greedy step earlier still falls short: no more pruning than needed
        path = greedy_path(sens, step=step)
        index = path.index(amounts)
        assert meter(path[index - 1]) < target
        # as a warm start: the params give exactly these amounts, and the MACs are counted on
        # the model that the enqueued trial will build
        params = space.params_for({u: a for u, a in amounts.items() if a > 0})
        schedule = space.schedule_from_params(params)
        assert {n: p.amount for n, p in schedule.layers.items()} == {u: a for u, a in amounts.items() if a > 0}
        pruned = ap.apply_schedule(model, schedule, example_inputs=x)
        assert 1 - count_macs(pruned, x) / sens.unpruned_macs == pytest.approx(real)
        study = optuna.create_study()
        study.enqueue_trial(params, user_attrs={"role": "reference-sensitivity"})
        assert space.suggest(study.ask()) == schedule
    # the most sensitive structured unit (drop per MAC saved at half its channels) is pruned
    # no more than the least sensitive one
    units = [c.unit for c in sens.curves if c.method == "structured"]
    ratio = {u: sens.drop_at(u, 0.5) / max(sens.saved_at(u, 0.5), 1e-9) for u in units}
    amounts = allocate(sens, 0.5, measure=meter, step=step)
    assert amounts[max(units, key=ratio.__getitem__)] <= amounts[min(units, key=ratio.__getitem__)]


def test_warm_starts_are_enqueue_ready(scanned: tuple[SearchSpace, Sensitivity, dict[str, int]]) -> None:
    space, sens, _ = scanned
    starts = sensitivity_allocations(space, sens, (0.25, 0.5, 0.75, 0.75))
    assert len(starts) == 3  # the repeated target gives the same params once
    study = optuna.create_study()
    macs = []
    for params in starts:
        study.enqueue_trial(params)
        trial = study.ask()
        schedule = space.suggest(trial)
        assert trial.params == params and schedule == space.schedule_from_params(params)
        assert schedule.fine_tune_steps == max(space.config.fine_tune_steps) and schedule.steps == 1
        assert params["classifier.3:method"] == "none"  # the output layer: no structured pruning
        amounts = {n: p.amount for n, p in schedule.layers.items()}
        macs.append(sens.saved_fraction(amounts))
        study.tell(trial, 0.0)
    assert macs[0] >= 0.25 and macs[1] >= 0.5 and macs[2] >= 0.75 and macs == sorted(macs)
    cheap = sensitivity_allocations(space, sens, (0.5,), fine_tune_steps=25)
    assert cheap[0]["fine_tune_steps"] == 25


# ---------------------------------------------------------------------------- screening
def test_screen_is_cheap_and_keeps_the_architecture(digits_task: ap.Task) -> None:
    model, x = digits_task.model, digits_task.example_inputs
    space = SearchSpace(ap.prunable_layers(model, x), SpaceConfig(fine_tune_steps=[0, 25, 50, 100], round_to=None, fine_tune_per_trial=False))
    schedule = space.schedule_from_params(space.params_for({"features.3": 0.5}, fine_tune_steps=100, steps=2))
    steps_seen: list[int] = []

    def fine_tune(m: nn.Module, steps: int) -> None:
        steps_seen.append(steps)
        assert digits_task.fine_tune is not None
        digits_task.fine_tune(m, steps)

    score, pruned = screen(
        model, schedule, example_inputs=x, evaluate=digits_task.evaluate, fine_tune=fine_tune, fine_tune_steps=5
    )
    assert steps_seen == [5, 5]  # a short fine-tune after each of the two steps
    full = ap.apply_schedule(model, schedule, example_inputs=x)
    assert count_macs(pruned, x) == count_macs(full, x)
    assert [p.shape for p in pruned.parameters()] == [p.shape for p in full.parameters()]
    # The score is the returned model's, fine-tuned (the plain schedule's weights differ).
    assert score == digits_task.evaluate(pruned)
    assert any(not torch.equal(a, b) for a, b in zip(pruned.parameters(), full.parameters(), strict=True))


def test_a_scan_stored_by_an_older_version_still_reads() -> None:
    """``Sensitivity.to_dict`` now writes ``unpruned_score``/``unpruned_macs``; scans stored in
    studies before that carry ``baseline_score``/``baseline_macs`` and load the same."""
    curve = Curve(unit="u", method="structured", amounts=(0.5,), scores=(80.0,), macs_removed=(40,))
    sens = Sensitivity(curves=(curve,), unpruned_score=90.0, reference_score=90.0, unpruned_macs=100, seconds=0.0,
                       calibrated=True)  # fmt: skip
    data = sens.to_dict()
    assert data["unpruned_score"] == 90.0 and data["unpruned_macs"] == 100 and "baseline_score" not in data
    older = {("baseline" + k[len("unpruned"):] if k.startswith("unpruned") else k): v for k, v in data.items()}
    assert Sensitivity.from_dict(older) == sens == Sensitivity.from_dict(data)
