"""Tests of paired speedup measurement, its statistics, its cache and the deployment backends.

The only timing claims here are the statistical ones the method makes: a model against itself
gives 1 inside its interval, k times the work gives about k, and more rounds give a narrower
interval. Budgets are small: the suite runs on two shared cores.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune import TargetError
from autoprune.evaluation import (
    LatencyBackend,
    LatencyCache,
    Speedup,
    SpeedupMeter,
    Target,
    _backends,
    cached_speedup,
    check_outputs,
    get_backend,
    measure_speedup,
    median_interval,
    register_backend,
    speedup_key,
)
from autoprune.testing import models as zoo

TARGET = "cpu:threads=1"


@pytest.fixture(autouse=True)
def _private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tests never touch the machine-wide lock file (and do not queue behind other users)."""
    path = tmp_path / "latency.lock"
    monkeypatch.setenv("AUTOPRUNE_LATENCY_LOCK", str(path))
    return path


class MatmulChain(nn.Module):
    """``k`` identical 512x512 matrix products: k times the work of one, nothing else."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.fc = nn.Linear(512, 512, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.k):
            x = self.fc(x)
        return x


# ---------------------------------------------------------------------------- statistics
@pytest.mark.parametrize(
    ("n", "k"),
    [(6, 1), (8, 1), (9, 2), (12, 3), (20, 6), (30, 10), (100, 40)],
)
def test_median_interval_is_the_binomial_order_statistic_interval(n: int, k: int) -> None:
    # k from the binomial tables: the largest k with 2 * P(Bin(n, 1/2) <= k - 1) <= 0.05
    values = [float(v) for v in range(1, n + 1)]
    random.Random(n).shuffle(values)
    median, low, high, covered = median_interval(values)
    assert covered
    assert median == (n + 1) / 2
    assert (low, high) == (k, n + 1 - k)
    tail = sum(math.comb(n, i) for i in range(k)) / 2**n
    assert 2 * tail <= 0.05 < 2 * (tail + math.comb(n, k) / 2**n)


def test_median_interval_of_too_few_values_is_the_range_and_not_covered() -> None:
    assert median_interval([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0, False)
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0])[3] is False
    assert math.isnan(median_interval([])[0])


def test_median_interval_narrows_with_more_values() -> None:
    rng = random.Random(0)
    widths = []
    for n in (10, 40, 160):
        _, low, high, _ = median_interval([rng.gauss(1.5, 0.05) for _ in range(n)])
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_speedup_record_round_trips_and_reports_its_half_width() -> None:
    s = Speedup(ratio=2.0, low=1.9, high=2.2, rounds=10, model_ms=1.0, reference_ms=2.0, converged=False)
    assert s.rel_halfwidth == pytest.approx(0.1)
    assert Speedup.from_dict({**s.as_dict(), "unknown": 1}) == s


# ---------------------------------------------------------------------------- measurement
def _covers_one(measure: Callable[[], Speedup], tries: int = 3) -> Speedup:
    """A 95% interval misses the truth 1 time in 20 by construction (more on a loaded
    machine): up to ``tries`` independent measurements, the first that covers 1.0, which
    every one must be near."""
    for _ in range(tries):
        s = measure()
        assert s.ratio == pytest.approx(1.0, rel=0.1)
        if s.low <= 1.0 <= s.high:
            return s
    raise AssertionError(f"no interval of {tries} covered 1.0; the last: {s}")


def test_a_model_against_itself_is_one_within_its_interval() -> None:
    model, x = zoo.get("cnn", batch_size=4)
    s = _covers_one(lambda: measure_speedup(model, model, x, target=TARGET, budget_s=1.0))
    assert s.low <= s.ratio <= s.high
    assert s.rounds >= 3 and s.model_ms > 0 and s.reference_ms > 0
    assert s.target == TARGET and not s.cached


@pytest.mark.slow
def test_k_times_the_work_is_k_times_slower() -> None:
    torch.manual_seed(0)
    one, three = MatmulChain(1), MatmulChain(3)
    three.fc.weight.data.copy_(one.fc.weight.data)
    x = torch.randn(256, 512)
    s = measure_speedup(one, three, x, target=TARGET, budget_s=2.0)
    assert s.ratio == pytest.approx(3.0, rel=0.1)
    assert s.reference_ms / s.model_ms == pytest.approx(3.0, rel=0.1)
    assert s.reference_calls < s.model_calls  # each block lasts about as long on either side


@pytest.mark.slow
def test_the_interval_narrows_with_more_rounds() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    meter = SpeedupMeter(model, x, TARGET)
    # the same 5 ms blocks, 8 rounds against 64 (64 rounds take about 2 s: the budget is far
    # from binding; the warm-up takes a tenth of it)
    few = meter.measure(model, budget_s=10.0, rel_tol=0.0, max_rounds=8, block_s=0.005)
    many = meter.measure(model, budget_s=10.0, rel_tol=0.0, max_rounds=64, block_s=0.005)
    assert (few.rounds, many.rounds) == (8, 64)
    assert many.high - many.low < few.high - few.low
    assert not few.converged and not many.converged  # rel_tol 0 cannot be met


def test_a_tiny_budget_is_flagged_as_not_converged() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    s = measure_speedup(model, model, x, target=TARGET, budget_s=0.01, rel_tol=1e-6)
    assert not s.converged
    assert s.rounds >= 3 and s.low <= s.ratio <= s.high


@pytest.mark.slow
def test_a_loose_tolerance_converges_and_stops_early() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    s = measure_speedup(model, model, x, target=TARGET, budget_s=10.0, rel_tol=1.0, block_s=0.005)
    assert s.converged and s.rounds == 8  # the default min_rounds
    assert s.seconds < 10.0


def test_meter_keeps_its_own_reference_and_restores_the_model() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    meter = SpeedupMeter(model, x, TARGET)
    signature = meter.reference_signature
    model.train()
    with torch.no_grad():
        model.classifier[1].weight.zero_()  # the reference was copied: no effect on the meter
    assert meter.reference_signature == signature
    assert meter.reference.classifier[1].weight.count_nonzero() > 0 and not meter.reference.training
    meter.measure(model, budget_s=0.05)
    assert all(m.training for m in model.modules())


@pytest.mark.slow
def test_the_clock_is_thread_cpu_time_on_one_cpu_thread_and_wall_time_otherwise() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    assert measure_speedup(model, model, x, target=TARGET, budget_s=0.05).clock == "thread"
    assert measure_speedup(model, model, x, target="cpu:threads=2", budget_s=0.05).clock == "wall"
    assert measure_speedup(model, model, x, target=TARGET, budget_s=0.05, clock="wall").clock == "wall"
    with pytest.raises(ValueError, match="clock"):
        measure_speedup(model, model, x, target=TARGET, clock="cycles")


def test_work_on_another_thread_falls_back_to_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_backends, "_REGISTRY", dict(_backends._REGISTRY))

    @register_backend("elsewhere")
    class Elsewhere(LatencyBackend):
        def prepare(self, model: nn.Module, inputs: Any, target: Target) -> Callable[[], object]:
            def run() -> None:
                worker = threading.Thread(target=model, args=(inputs,))
                worker.start()
                worker.join()

            return run

    model, x = zoo.get("cnn", batch_size=8)
    s = measure_speedup(model, model, x, target="cpu:threads=1,backend=elsewhere", budget_s=0.1, clock="thread")
    assert s.clock == "wall"


@pytest.mark.parametrize(
    ("budget_s", "rel_tol", "max_rounds"),
    [(0.0, 0.02, None), (math.inf, 0.02, None), (1.0, -0.1, None), (1.0, 0.02, 0)],
)
def test_bad_measurement_options_are_rejected(budget_s: float, rel_tol: float, max_rounds: int | None) -> None:
    model, x = zoo.get("cnn")
    with pytest.raises(ValueError, match="must hold"):
        SpeedupMeter(model, x, TARGET).measure(model, budget_s=budget_s, rel_tol=rel_tol, max_rounds=max_rounds)


# ---------------------------------------------------------------------------- cache
def _fake(ratio: float, halfwidth: float, meter: SpeedupMeter) -> Speedup:
    return Speedup(
        ratio=ratio,
        low=ratio * (1 - halfwidth),
        high=ratio * (1 + halfwidth),
        rounds=20,
        model_ms=1.0,
        reference_ms=ratio,
        converged=halfwidth <= 0.02,
        target=str(meter.target),
    )


@pytest.mark.parametrize("on_disk", [False, True])
def test_cache_reuses_a_narrow_entry_and_measures_a_wide_one_again(on_disk: bool, tmp_path: Path) -> None:
    model, x = zoo.get("cnn", batch_size=2)
    meter = SpeedupMeter(model, x, TARGET)
    cache = LatencyCache(tmp_path / "cache.sqlite" if on_disk else None)
    key = speedup_key(model, meter, 0.2)

    cache.put_speedup(key, _fake(7.0, 0.01, meter))  # narrow: reused as is
    hit = cached_speedup(meter, model, cache, budget_s=0.2, rel_tol=0.02)
    assert hit.cached and hit.ratio == 7.0 and hit.rounds == 20

    cache.put_speedup(key, _fake(7.0, 0.30, meter))  # wide: measured again
    fresh = cached_speedup(meter, model, cache, budget_s=0.2, rel_tol=0.02)
    assert not fresh.cached and fresh.ratio != 7.0 and fresh.budget_s == 0.2
    stored = cache.get_speedup(key)
    assert stored is not None and stored.rel_halfwidth == pytest.approx(min(fresh.rel_halfwidth, 0.30))

    # a tolerance looser than the stored entry's interval accepts it
    cache.put_speedup(key, _fake(7.0, 0.30, meter))
    assert cached_speedup(meter, model, cache, budget_s=0.2, rel_tol=0.5).cached


class _ScriptedMeter:
    """A meter whose measurements come from a script: (ratio, half-width) per call, budgets recorded."""

    def __init__(self, meter: SpeedupMeter, script: list[tuple[float, float]]) -> None:
        self.target, self._meter, self.script, self.budgets = meter.target, meter, list(script), []

    def measure(self, model: nn.Module, *, budget_s: float, rel_tol: float, **_: Any) -> Speedup:
        self.budgets.append(budget_s)
        ratio, halfwidth = self.script.pop(0)
        return _fake(ratio, halfwidth, self._meter)

    def __getattr__(self, name: str) -> Any:  # what speedup_key reads of the reference
        return getattr(self._meter, name)


def test_a_wide_measurement_is_measured_again_with_more_time(tmp_path: Path) -> None:
    model, x = zoo.get("cnn", batch_size=2)
    meter = SpeedupMeter(model, x, TARGET)
    # A loaded machine: 1.6x within +-90%, then +-30%, then +-4%; 2 s allowed up to 8 s in all.
    scripted = _ScriptedMeter(meter, [(1.6, 0.9), (1.2, 0.3), (1.3, 0.04)])
    cache = LatencyCache(tmp_path / "cache.sqlite")
    got = cached_speedup(scripted, model, cache, budget_s=2.0, rel_tol=0.02, max_budget_s=8.0)  # type: ignore[arg-type]
    assert scripted.budgets == [2.0, 4.0, 2.0]  # doubled, then what is left of the 8 s
    assert got.ratio == 1.3 and got.rel_halfwidth == pytest.approx(0.04)
    stored = cache.get_speedup(speedup_key(model, meter, 2.0))
    assert stored is not None and stored.ratio == 1.3
    # narrow enough at once (within +-10%): measured once; no max_budget_s: measured once however wide
    once = _ScriptedMeter(meter, [(1.3, 0.08)])
    assert cached_speedup(once, model, None, budget_s=2.0, max_budget_s=8.0).ratio == 1.3  # type: ignore[arg-type]
    assert once.budgets == [2.0]
    alone = _ScriptedMeter(meter, [(1.6, 0.9)])
    assert cached_speedup(alone, model, None, budget_s=2.0).ratio == 1.6  # type: ignore[arg-type]
    assert alone.budgets == [2.0]
    # the extra measurements keep the narrowest, even when a later one is wider
    worse = _ScriptedMeter(meter, [(1.5, 0.5), (0.7, 0.8), (1.1, 0.6)])
    assert cached_speedup(worse, model, None, budget_s=1.0, max_budget_s=7.0).ratio == 1.5  # type: ignore[arg-type]
    assert worse.budgets == [1.0, 2.0, 4.0]


def test_speedup_key_names_budget_backend_threads_batch_and_reference() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    small, _ = zoo.get("cnn", batch_size=2)
    small.classifier[1] = nn.Linear(256, 64)
    small.classifier[3] = nn.Linear(64, 10)
    meter = SpeedupMeter(model, x, TARGET)
    keys = {
        speedup_key(model, meter, 1.0),
        speedup_key(model, meter, 2.0),
        speedup_key(small, meter, 1.0),
        speedup_key(model, SpeedupMeter(small, x, TARGET), 1.0),
        speedup_key(model, SpeedupMeter(model, x, "cpu:threads=2"), 1.0),
        speedup_key(model, SpeedupMeter(model, x, "cpu:threads=1,batch=4"), 1.0),
        speedup_key(model, SpeedupMeter(model, x, "cpu:threads=1,backend=torchscript"), 1.0),
    }
    assert len(keys) == 7
    # weights do not matter; the same architecture against the same reference is one entry
    other, _ = zoo.get("cnn", batch_size=2, seed=1)
    assert speedup_key(other, meter, 1.0) == speedup_key(model, meter, 1.0)


def test_no_cache_always_measures() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    s = cached_speedup(SpeedupMeter(model, x, TARGET), model, None, budget_s=0.05)
    assert not s.cached and s.rounds >= 3


# ---------------------------------------------------------------------------- deployment backends
def _outputs_of(backend: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    target = Target.parse(f"cpu:threads=1,backend={backend}")
    with torch.inference_mode():
        run = get_backend(backend).prepare(model, x, target)
        out = run()
    return torch.as_tensor(out[0]) if isinstance(out, list) else out


@pytest.mark.parametrize("name", ["cnn", "resnet", "mobilenetv2", "transformer"])
def test_onnxruntime_outputs_match_eager(name: str) -> None:
    pytest.importorskip("onnxruntime")
    model, x = zoo.get(name, batch_size=3)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(_outputs_of("onnxruntime", model, x), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_compile_outputs_match_eager() -> None:
    model, x = zoo.get("cnn", batch_size=3)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(_outputs_of("compile", model, x), expected, rtol=1e-3, atol=1e-4)


def test_speedup_on_onnxruntime_of_a_model_against_itself() -> None:
    pytest.importorskip("onnxruntime")
    model, x = zoo.get("cnn", batch_size=2)
    target = "cpu:threads=1,backend=onnxruntime"
    s = _covers_one(lambda: measure_speedup(model, model, x, target=target, budget_s=0.5))
    assert s.target == target


def test_missing_onnxruntime_is_one_line_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    model, x = zoo.get("cnn")
    with pytest.raises(TargetError, match=r'pip install "autoprune\[onnxruntime\]"') as info:
        SpeedupMeter(model, x, "cpu:backend=onnxruntime")
    assert "\n" not in str(info.value)


def test_onnxruntime_refuses_half_precision() -> None:
    pytest.importorskip("onnxruntime")
    model, x = zoo.get("cnn")
    with pytest.raises(TargetError, match="float32 on cpu only"):
        SpeedupMeter(model, x, "cpu:backend=onnxruntime,dtype=bfloat16")


class _Counter(nn.Module):
    """Eager output changes on every call; an exported graph freezes the first call's value."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x) * float(self.calls)


def test_an_output_mismatch_is_a_target_error() -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(TargetError, match="differs from eager by"):
        SpeedupMeter(_Counter(), torch.randn(2, 4), "cpu:backend=onnxruntime")


def test_check_outputs_compares_every_tensor_against_the_tolerance() -> None:
    model = nn.Linear(2, 2)
    a = torch.tensor([1.0, 100.0])
    check_outputs("x", model, (a, a + 0.05), (a, a), torch.float32)  # 0.05 / 100 = 5e-4 <= 1e-3
    with pytest.raises(TargetError, match="output 1 .* differs from eager by 1.00e-02"):
        check_outputs("x", model, (a, a + 1.0), (a, a), torch.float32)
    with pytest.raises(TargetError, match=r"shape \(1,\)"):
        check_outputs("x", model, a[:1], a, torch.float32)
    check_outputs("x", model, a + 1.0, a, torch.bfloat16)  # 1e-2 <= 5e-2 in bfloat16


def test_compile_without_a_cxx_compiler_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    model, x = zoo.get("cnn")
    with pytest.raises(TargetError, match="needs a C\\+\\+ compiler") as info:
        SpeedupMeter(model, x, "cpu:backend=compile")
    assert "\n" not in str(info.value)


def test_root_package_exports_the_speedup_api() -> None:
    assert ap.measure_speedup is measure_speedup and ap.SpeedupMeter is SpeedupMeter and ap.Speedup is Speedup
    assert dataclasses.is_dataclass(ap.Speedup)
