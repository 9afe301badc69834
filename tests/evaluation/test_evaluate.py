"""Tests of the evaluator: targets, size, MACs, latency, the latency cache and evaluate()."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune._lock import machine_lock
from autoprune.evaluation import (
    METRIC_NAMES,
    LatencyBackend,
    LatencyCache,
    LatencyResult,
    Target,
    _backends,
    _evaluate,
    _latency,
    architecture_signature,
    count_macs,
    derived_metrics,
    measure_latency,
    register_backend,
    size_stats,
    tensor_bytes,
    training_gate,
)
from autoprune.testing import models as zoo

BUDGET = 0.3  # seconds per latency measurement in these tests


@pytest.fixture(autouse=True)
def _private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tests never touch the machine-wide lock file (and do not queue behind other users)."""
    path = tmp_path / "latency.lock"
    monkeypatch.setenv("AUTOPRUNE_LATENCY_LOCK", str(path))
    return path


def _holder(t: torch.Tensor) -> nn.Module:
    module = nn.Module()
    module.w = nn.Parameter(t)
    return module


class _Recorder(nn.Module):
    """A linear layer that records the shape and dtype of what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.seen: list[tuple[tuple[int, ...], torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((tuple(x.shape), x.dtype))
        return self.fc(x)


# ---------------------------------------------------------------------------- Target
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cpu", Target()),
        ("cuda", Target(device="cuda")),
        ("cuda:1", Target(device="cuda:1")),
        ("cpu:threads=2,batch=32,dtype=float32", Target(threads=2, batch_size=32)),
        ("cuda:0:batch=4,dtype=fp16", Target(device="cuda:0", batch_size=4, dtype="float16")),
        (" CPU:threads=1 ", Target(threads=1)),
        ("cpu:backend=dense", Target()),
    ],
)
def test_target_parse(text: str, expected: Target) -> None:
    target = Target.parse(text)
    assert target == expected
    assert Target.parse(str(target)) == target


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:3"])
@pytest.mark.parametrize("options", [{}, {"threads": 3}, {"batch_size": 7, "dtype": "bfloat16"}])
def test_target_str_round_trips(device: str, options: dict[str, Any]) -> None:
    target = Target(device=device, **options)
    assert Target.parse(str(target)) == target


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("tpu", "tpu"),
        ("cuda:x", "cuda:x"),
        ("cpu:threads=0", "threads=0"),
        ("cpu:threads=two", "two"),
        ("cpu:batch=-1", "batch_size=-1"),
        ("cpu:dtype=int8", "int8"),
        ("cpu:speed=fast", "speed=fast"),
        ("cpu:threads=1,threads=2", "threads"),
        ("cpu:backend=nope", "nope"),
        ("cpu:a:b", "cpu:a:b"),
    ],
)
def test_target_parse_rejects_bad_text(text: str, named: str) -> None:
    with pytest.raises(ap.TargetError, match="must|allowed|twice|follow") as info:
        Target.parse(text)
    assert named in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_target_without_cuda_is_a_clear_error() -> None:
    model, x = nn.Linear(8, 4), torch.randn(2, 8)
    with pytest.raises(ap.TargetError, match="needs CUDA"):
        Target.parse("cuda").check_available()
    with pytest.raises(ap.TargetError, match="needs CUDA"):
        measure_latency(model, x, "cuda:0", time_budget_s=BUDGET)
    with pytest.raises(ap.TargetError, match="needs CUDA"):
        ap.evaluate(model, x, target="cuda")


def test_cuda_index_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    Target.parse("cuda:0").check_available()
    with pytest.raises(ap.TargetError, match=r"names CUDA device 3, but this machine has 1 \(allowed: cuda:0"):
        Target.parse("cuda:3").check_available()


# ---------------------------------------------------------------------------- size
def test_sparse_bytes_of_a_90_percent_zero_tensor() -> None:
    t = torch.randn(512, 512)
    t[torch.rand(512, 512) < 0.9] = 0
    dense, sparse = tensor_bytes(t)
    assert dense == 512 * 512 * 4
    assert sparse < 0.2 * dense


def test_sparse_bytes_never_above_dense() -> None:
    for t in (torch.randn(64, 64), torch.randn(10), torch.randn(3, 3, 3, 3), torch.tensor(2.0)):
        dense, sparse = tensor_bytes(t)
        assert sparse == dense == t.numel() * 4
    # a few zeros make neither encoding pay: still dense
    t = torch.randn(64, 64)
    t[0, :3] = 0
    assert tensor_bytes(t)[1] == tensor_bytes(t)[0]


def test_sparse_bytes_formulas() -> None:
    # 90% zeros in 1000 x 100: bitmask = 100000/8 + 10000*4; CSR = 10000*(4+1) + 1001*2
    t = torch.zeros(1000, 100)
    t[:, :10] = 1.0
    assert tensor_bytes(t) == (400_000, min(12_500 + 40_000, 50_000 + 2_002))
    # 99.99% zeros: CSR beats the bitmask
    t = torch.zeros(1000, 1000)
    t[::10, 0] = 1.0
    dense, sparse = tensor_bytes(t)
    assert sparse == 100 * 4 + 100 * 2 + 1001 * 1 < 1_000_000 / 8
    assert tensor_bytes(torch.zeros(0, 4)) == (0, 0)


def test_size_stats_counts_params_and_tied_weights_once() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))
    model[2].weight = model[0].weight  # tied
    with torch.no_grad():
        model[0].weight[:5] = 0
    stats = size_stats(model)
    assert stats["params"] == 100 + 10 + 10
    assert stats["nonzero_params"] == 50 + 10 + 10
    assert stats["dense_bytes"] == 120 * 4
    assert stats["sparse_bytes"] < stats["dense_bytes"]


def test_size_stats_of_batchnorm_counts_buffers() -> None:
    stats = size_stats(nn.BatchNorm2d(8))
    assert stats["params"] == 16
    # weight, bias, running mean and var as fp32, num_batches_tracked as int64
    assert stats["dense_bytes"] == 4 * 8 * 4 + 8


@pytest.mark.parametrize(
    ("dtype", "size"),
    [(torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2), (torch.int8, 1), (torch.float64, 8)],
)
def test_bytes_count_each_tensor_at_its_own_dtype(dtype: torch.dtype, size: int) -> None:
    # 100 x 100 with exactly 1000 nonzeros (every tenth value):
    # bitmask = 10000/8 + 1000*v; CSR = 1000*v + 1000*1 (column < 256) + 101*2 (count < 65536)
    t = torch.zeros(100, 100, dtype=dtype)
    t.view(-1)[::10] = 1
    csr, bitmask = 1000 * size + 1000 + 202, 1250 + 1000 * size
    assert tensor_bytes(t) == (10_000 * size, min(csr, bitmask))
    assert tensor_bytes(torch.ones(7, dtype=dtype)) == (7 * size, 7 * size)


def test_size_stats_of_a_half_precision_model() -> None:
    model = nn.Sequential(nn.Linear(10, 4), nn.BatchNorm1d(4))
    # Linear 44 values, BatchNorm weight/bias/mean/var 16 values, num_batches_tracked int64
    assert size_stats(model)["dense_bytes"] == 60 * 4 + 8
    assert size_stats(model.half())["dense_bytes"] == 60 * 2 + 8
    assert size_stats(model.bfloat16())["dense_bytes"] == 60 * 2 + 8
    with torch.no_grad():
        model[0].weight[:, :5] = 0  # 20 of 40 zero: bitmask 5 + 20*2 = 45 < CSR 20*(2+1) + 5*1 = 65 < 80
    stats = size_stats(model)
    assert stats["dense_bytes"] == 60 * 2 + 8
    # all-zero tensors (BatchNorm bias and running mean, num_batches_tracked) store in 1 byte
    # of bitmask; Linear bias, BatchNorm weight and running var stay dense (4 * 2 bytes each)
    assert stats["sparse_bytes"] == 45 + 3 * 8 + 3 * 1


# ---------------------------------------------------------------------------- MACs
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize(("groups", "stride"), [(1, 1), (4, 2)])
def test_macs_of_conv2d_match_the_formula(batch: int, groups: int, stride: int) -> None:
    conv = nn.Conv2d(8, 16, 3, stride=stride, padding=1, groups=groups)
    h_out = (20 + 2 - 3) // stride + 1
    expected = 16 * h_out * h_out * (8 // groups) * 3 * 3  # per sample, whatever the batch
    assert count_macs(conv, torch.randn(batch, 8, 20, 20)) == expected


def test_macs_of_linear_and_attention() -> None:
    assert count_macs(nn.Linear(20, 30), torch.randn(4, 20)) == 600
    assert count_macs(nn.Linear(20, 30), (torch.randn(4, 7, 20),)) == 7 * 600
    model, x = zoo.get("transformer", batch_size=3)
    seq, dim, d_in = 16, 128, 32
    block = seq * dim * 3 * dim + seq * dim * dim + 2 * seq * seq * dim + 2 * seq * dim * 4 * dim
    assert count_macs(model, x) == seq * d_in * dim + 2 * block + dim * 10


def test_macs_restore_modes_and_fast_path() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout()).train()
    model[1].eval()
    count_macs(model, torch.randn(2, 4))
    assert model.training and model[0].training and not model[1].training
    assert torch.backends.mha.get_fastpath_enabled()


# ---------------------------------------------------------------------------- latency
def _conv_net(width: int) -> nn.Module:
    return zoo.PlainCNN(width=width).eval()


class _Clock:
    """Stands in for ``time`` in the latency module: its clock moves only when a model runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Costs(nn.Module):
    """Each forward pass takes ``ms`` on the clock."""

    def __init__(self, clock: _Clock, ms: float) -> None:
        super().__init__()
        self.clock, self.ms = clock, ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += self.ms / 1e3
        return x


def test_latency_is_the_median_time_of_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a clock that moves only when the model runs, the method is checked exactly, not the
    # machine: warm-up for 15% of the budget, repeats of budget/50 in back-to-back calls, the
    # median per call, repeats until min_repeats agree, the same result for the same model.
    clock = _Clock()
    monkeypatch.setattr(_latency, "time", clock)
    x = torch.randn(2, 3)
    a, b, c = (measure_latency(_Costs(clock, ms), x, "cpu:threads=1", time_budget_s=0.5) for ms in (2.0, 2.0, 7.0))
    assert a.median_ms == pytest.approx(2.0, rel=1e-9) and c.median_ms == pytest.approx(7.0, rel=1e-9)
    assert a.median_ms == pytest.approx(b.median_ms, rel=1e-12) and a.spread == b.spread < 1e-9
    assert (a.calls_per_repeat, c.calls_per_repeat) == (5, 1)  # 10 ms a repeat: 5 x 2 ms, 1 x 7 ms
    assert a.repeats == b.repeats == c.repeats == 10  # they agree at once: min_repeats
    # warm-up (38 x 2 ms, 11 x 7 ms: the first calls past 75 ms), then 10 repeats
    assert a.seconds == pytest.approx(0.076 + 10 * 5 * 0.002, abs=1e-9)
    assert c.seconds == pytest.approx(0.077 + 10 * 1 * 0.007, abs=1e-9)


def test_half_the_channels_measures_faster() -> None:
    x = torch.randn(4, 3, 32, 32)
    full = measure_latency(_conv_net(64), x, "cpu:threads=1", time_budget_s=BUDGET)
    half = measure_latency(_conv_net(32), x, "cpu:threads=1", time_budget_s=BUDGET)
    assert half.median_ms < 0.9 * full.median_ms  # ~4x fewer MACs; a generous margin


def test_threads_and_modes_are_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return x * 2

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    model = nn.Sequential(Probe(), nn.Dropout()).train()
    model[1].eval()
    measure_latency(model, torch.randn(2, 3), Target(threads=other), time_budget_s=0.05)
    assert set(seen) == {other}
    assert torch.get_num_threads() == before
    assert model.training and not model[1].training

    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(Boom().train(), torch.randn(2, 3), Target(threads=other), time_budget_s=0.05)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(("example_batch", "target_batch"), [(2, 5), (6, 4), (3, None)])
def test_batch_is_resized_and_inputs_cast(example_batch: int, target_batch: int | None) -> None:
    model = _Recorder()
    target = Target(batch_size=target_batch, dtype="bfloat16")
    measure_latency(model, torch.randn(example_batch, 8), target, time_budget_s=0.05)
    shapes = {s for s, _ in model.seen}
    # the bf16 run happens on a copy, so the original records nothing and stays fp32
    assert not shapes
    assert model.fc.weight.dtype == torch.float32
    measure_latency(model, torch.randn(example_batch, 8), Target(batch_size=target_batch), time_budget_s=0.05)
    assert {s for s, _ in model.seen} == {(target_batch or example_batch, 8)}


def test_dtype_cast_reaches_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[nn.Module] = []
    original = _backends.model_on_target

    def spy(model: nn.Module, target: Target) -> nn.Module:
        copies.append(original(model, target))
        return copies[-1]

    monkeypatch.setattr(_backends, "model_on_target", spy)
    model = _Recorder()
    measure_latency(model, torch.randn(2, 8), "cpu:dtype=bfloat16,batch=3", time_budget_s=0.05)
    assert copies[0] is not model
    assert {s for s in copies[0].seen} == {((3, 8), torch.bfloat16)}  # type: ignore[attr-defined]
    assert model.fc.weight.dtype == torch.float32


def _hold_lock(lock_path: Path, seconds: float, held: threading.Event) -> None:
    with machine_lock(lock_path).measuring():
        held.set()
        time.sleep(seconds)


@pytest.mark.parametrize("use_lock", [True, False])
def test_measurement_waits_for_the_lock(_private_lock: Path, use_lock: bool) -> None:
    held = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(_private_lock, 0.4, held))
    holder.start()
    held.wait()
    result = measure_latency(nn.Linear(8, 4), torch.randn(2, 8), time_budget_s=0.05, lock=use_lock)
    holder.join()
    if use_lock:
        assert result.wait_s > 0.2
    else:
        assert result.wait_s == 0.0


def test_training_gate_waits_while_a_measurement_runs(_private_lock: Path) -> None:
    assert training_gate().waited_s < 0.2  # free: returns at once
    held = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(_private_lock, 0.4, held))
    holder.start()
    held.wait()
    gate = training_gate()
    holder.join()
    assert gate.waited_s > 0.2


def test_a_measurement_waits_for_a_running_gated_step() -> None:
    in_step = threading.Event()

    def step() -> None:
        with training_gate():
            in_step.set()
            time.sleep(0.4)

    trainer = threading.Thread(target=step)
    trainer.start()
    in_step.wait()
    result = measure_latency(nn.Linear(8, 4), torch.randn(2, 8), time_budget_s=0.05)
    trainer.join()
    assert result.wait_s > 0.2


def test_a_gate_inside_this_process_own_measurement_does_not_deadlock() -> None:
    gated: list[float] = []

    class GatedModel(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with training_gate() as gate:
                gated.append(gate.waited_s)
                return super().forward(x)

    measure_latency(GatedModel(8, 4), torch.randn(2, 8), time_budget_s=0.05)
    assert gated and max(gated) < 1.0


@pytest.mark.parametrize("name", zoo.names())
def test_torchscript_backend_runs_the_same_function(name: str) -> None:
    # traced, frozen, BatchNorm folded: the same outputs as the eager model, timed as deployed
    model, x = zoo.get(name, batch_size=4)
    model.eval()
    target = Target.parse("cpu:threads=1,backend=torchscript")
    with torch.inference_mode():
        run = _backends.get_backend("torchscript").prepare(model, x, target)
        torch.testing.assert_close(run(), model(x), rtol=1e-4, atol=1e-4)
    assert all(not isinstance(m, torch.jit.ScriptModule) for m in model.modules())  # the model is untouched
    result = measure_latency(model, x, target, time_budget_s=0.1, lock=False)
    assert result.median_ms > 0 and result.repeats >= 1
    assert architecture_signature(model, target, x) != architecture_signature(model, "cpu:threads=1", x)


def test_torchscript_backend_names_what_cannot_be_traced() -> None:
    class Labelled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> tuple[str, torch.Tensor]:
            return "label", self.fc(x)

    with pytest.raises(ap.TargetError) as err:
        measure_latency(Labelled(), torch.randn(2, 4), "cpu:backend=torchscript", time_budget_s=0.05, lock=False)
    message = str(err.value)
    assert "'torchscript' cannot trace Labelled" in message and "dense" in message and "\n" not in message

    class TwoInputs(nn.Module):  # keyword inputs trace too
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + y

    inputs = {"x": torch.randn(2, 4), "y": torch.randn(2, 4)}
    assert measure_latency(TwoInputs(), inputs, "cpu:backend=torchscript", time_budget_s=0.05, lock=False).median_ms > 0


def test_around_latency_wraps_the_measurement_only() -> None:
    # the search lets go of its busy hold only while it measures, not while it computes
    # accuracy and MACs, and not at all on a cache hit
    import contextlib

    events: list[str] = []

    @contextlib.contextmanager
    def around() -> Any:
        events.append("enter")
        yield
        events.append("exit")

    model, x = zoo.get("cnn")
    cache = LatencyCache()
    # any spread is tight enough (a cached latency is reused only within the spread asked)
    options: dict[str, Any] = {"time_budget_s": 0.05, "around_latency": around, "max_spread": math.inf}
    first = ap.evaluate(model, x, target="cpu:threads=1", cache=cache, **options)
    assert events == ["enter", "exit"] and not first.latency_cached
    again = ap.evaluate(model, x, target="cpu:threads=1", cache=cache, **options)
    assert events == ["enter", "exit"] and again.latency_cached
    ap.evaluate(model, x, target="cpu:threads=1", measure_latency=False, around_latency=around)
    assert events == ["enter", "exit"]


def test_custom_backend_is_selected_by_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_backends, "_REGISTRY", dict(_backends._REGISTRY))
    calls: list[int] = []

    @register_backend("counting")
    class Counting(LatencyBackend):
        def prepare(self, model: nn.Module, inputs: Any, target: Target) -> Callable[[], object]:
            return lambda: calls.append(1)

        def signature(self, model: nn.Module) -> str:
            return str(size_stats(model)["nonzero_params"])

    target = Target.parse("cpu:backend=counting")
    assert str(target) == "cpu:backend=counting"
    measure_latency(nn.Linear(8, 4), torch.randn(2, 8), target, time_budget_s=0.05)
    assert calls
    # this backend's latency depends on zeros, so zeros change its cache key (not the dense one's)
    model = nn.Linear(8, 4)
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned.weight[0] = 0
    assert architecture_signature(model, target) != architecture_signature(pruned, target)
    assert architecture_signature(model, "cpu") == architecture_signature(pruned, "cpu")
    with pytest.raises(TypeError):
        register_backend("bad")(object)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- cache
def test_signature_ignores_weights_and_sees_structure() -> None:
    a, x = zoo.get("resnet", seed=0)
    b, _ = zoo.get("resnet", seed=1)
    with torch.no_grad():
        b.fc.weight[:, :10] = 0  # unstructured zeros do not change the architecture
    narrow = zoo.ResNetLike(width=32)
    sig = architecture_signature(a, "cpu", x)
    assert sig == architecture_signature(b, "cpu", x)
    assert sig != architecture_signature(narrow, "cpu", x)
    assert sig != architecture_signature(a, "cpu:threads=1", x)
    assert sig != architecture_signature(a, "cpu:batch=8", x)
    assert sig != architecture_signature(a, "cpu", torch.randn(1, 3, 64, 64))
    strided = zoo.ResNetLike()
    strided.stem[0].stride = (2, 2)  # same shapes, different computation
    assert sig != architecture_signature(strided, "cpu", x)


def _twin_classes() -> tuple[type[nn.Module], type[nn.Module]]:
    class Net(nn.Module):  # same name, same layers ...
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    first = Net

    class Net(nn.Module):  # type: ignore[no-redef]  # ... but it computes more
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(self.fc(x)))

    return first, Net


@pytest.mark.slow
def test_signature_sees_forward_code_and_is_the_same_in_every_process() -> None:
    # A latency cache file is shared by the studies of a folder: two model classes with
    # the same name and layers but different forward code must not share a latency.
    a, b = _twin_classes()
    x = torch.randn(2, 8)
    assert type(a()).__qualname__ == type(b()).__qualname__
    assert architecture_signature(a(), "cpu", x) != architecture_signature(b(), "cpu", x)
    assert architecture_signature(a(), "cpu", x) == architecture_signature(a(), "cpu", x)
    # no addresses or set order in it: another process with another hash seed agrees
    code = (
        "from autoprune.testing import models as zoo; from autoprune.evaluation import architecture_signature as s; "
        "m, x = zoo.get('transformer'); print(s(m, 'cpu', x))"
    )
    import os
    import subprocess
    import sys

    sigs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout.strip()
        for seed in (1, 2)
    }
    m, x = zoo.get("transformer")
    assert sigs == {architecture_signature(m, "cpu", x)}


def test_cache_hit_on_an_identical_architecture_does_not_remeasure(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[nn.Module] = []
    real = _evaluate._measure_latency

    def counting(model: nn.Module, *args: Any, **kwargs: Any) -> LatencyResult:
        calls.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(_evaluate, "_measure_latency", counting)
    cache = LatencyCache()
    x = torch.randn(2, 3, 32, 32)
    loose = math.inf  # any spread is tight enough: reuse is decided by the architecture alone
    first = ap.evaluate(_conv_net(16), x, target="cpu:threads=1", cache=cache, time_budget_s=0.1, max_spread=loose)
    twin = _conv_net(16)
    with torch.no_grad():
        twin.classifier[1].weight[::2] = 0
    second = ap.evaluate(twin, x, target="cpu:threads=1", cache=cache, time_budget_s=0.1, max_spread=loose)
    assert len(calls) == 1
    assert not first.latency_cached and second.latency_cached
    assert second.latency_ms == first.latency_ms and second.time_latency_s == 0.0
    assert second.nonzero_params < first.nonzero_params
    ap.evaluate(_conv_net(8), x, target="cpu:threads=1", cache=cache, time_budget_s=0.1, max_spread=loose)
    ap.evaluate(twin, x, target="cpu:threads=1,batch=4", cache=cache, time_budget_s=0.1, max_spread=loose)
    assert len(calls) == 3 and len(cache) == 3


@pytest.mark.slow  # 200 SQLite writes from four threads that wait on each other (seconds)
def test_file_cache_is_shared_and_safe_under_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "latency.sqlite"
    writers = [LatencyCache(path) for _ in range(4)]
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for j in range(25):
                writers[i].put(f"k{j}", (float(i), 0.01, 10, 0.5))
                writers[i].put(f"w{i}-{j}", LatencyResult(float(j), 0.02, 7, 0.1, 0.0, 3))
        except BaseException as exc:  # noqa: B036 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    reader = LatencyCache(path)
    assert len(reader) == 25 + 4 * 25
    assert reader.get("w3-7") == LatencyResult(7.0, 0.02, 7, 0.1, 0.0, 3)
    hit = reader.get("k0")
    assert hit is not None and hit.median_ms in {0.0, 1.0, 2.0, 3.0}
    assert reader.get("missing") is None
    assert LatencyCache(path, host="elsewhere").get("k0") is None  # another machine measures itself


# ---------------------------------------------------------------------------- evaluate
def _tiny_task(model: nn.Module, x: torch.Tensor) -> ap.Task:
    def judge(m: nn.Module) -> float:
        assert not torch.is_grad_enabled()
        return 87.5

    return ap.Task(name="tiny", model=model, example_inputs=x, evaluate=judge)


def test_evaluate_a_task_fills_every_field_and_leaves_the_model_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).train()
    x = torch.randn(2, 3, 8, 8)
    state = copy.deepcopy(model.state_dict())
    metrics = ap.evaluate(model, _tiny_task(model, x), target="cpu:threads=1", time_budget_s=0.1)
    data = metrics.as_dict()
    assert set(METRIC_NAMES) <= set(data)
    assert data["accuracy"] == 87.5
    assert data["params"] == sum(p.numel() for p in model.parameters())
    assert data["macs"] == 8 * 6 * 6 * 3 * 9 + 8 * 6 * 6 * 4
    assert data["latency_ms"] > 0 and data["latency_repeats"] >= 3
    assert data["target"] == "cpu:threads=1" and data["host"]
    assert data["time_eval_s"] > 0 and data["time_latency_s"] > 0
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_evaluate_plain_inputs_and_no_latency() -> None:
    metrics = ap.evaluate(nn.Linear(8, 4), torch.randn(2, 8), measure_latency=False)
    assert math.isnan(metrics.accuracy) and math.isnan(metrics.latency_ms)
    assert metrics.macs == 32 and metrics.time_latency_s < 0.1


def test_derived_metrics() -> None:
    base = ap.Metrics(90.0, 100, 100, 400, 400, 1000, 10.0, 0.01)
    pruned = ap.Metrics(88.5, 100, 10, 400, 100, 1000, 8.0, 0.01)
    derived = derived_metrics(pruned, base)
    assert {k: derived[k] for k in ("accuracy_drop", "compression")} == {"accuracy_drop": 1.5, "compression": 4.0}
    # 10 ms and 8 ms were timed apart (no speedup meter): no ratio is made of them
    assert math.isnan(derived["speedup"])
    paired = dataclasses.replace(pruned, speedup=1.3)
    assert derived_metrics(paired, base)["speedup"] == 1.3  # the paired ratio, whatever the latencies say
    assert math.isnan(derived["test_accuracy_drop"])  # no test split measured
    with_test = derived_metrics({"accuracy": 88.5, "test_accuracy": 87.0}, {"accuracy": 90.0, "test_accuracy": 89.5})
    assert with_test["test_accuracy_drop"] == 2.5
    # from stored dicts; what cannot be computed is NaN (never 0 or inf)
    undefined = derived_metrics({"accuracy": None, "latency_ms": 0.0, "sparse_bytes": 0}, base.as_dict())
    assert all(math.isnan(v) for v in undefined.values())


# ---------------------------------------------------------------------------- paired speedup in evaluate
def test_evaluate_with_a_speedup_meter_records_the_paired_speedup() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    meter = ap.SpeedupMeter(model, x, "cpu:threads=1")
    cache = LatencyCache()
    m = ap.evaluate(model, x, speedup_meter=meter, cache=cache, time_budget_s=0.3, rel_tol=1.0)
    assert m.target == "cpu:threads=1" and m.latency_clock == "thread" and not m.latency_cached
    assert m.speedup_low <= m.speedup <= m.speedup_high and m.latency_repeats >= 3
    assert m.latency_ms > 0 and m.reference_latency_ms > 0
    assert derived_metrics(m, m)["speedup"] == m.speedup  # the paired ratio, not a ratio of latencies
    events: list[str] = []

    @contextlib.contextmanager
    def around() -> Iterator[None]:
        events.append("enter")
        yield

    again = ap.evaluate(
        model, x, speedup_meter=meter, cache=cache, time_budget_s=0.3, rel_tol=1.0, around_latency=around
    )
    assert events == []  # a cache hit is not a measurement
    assert again.latency_cached and again.speedup == m.speedup and again.time_latency_s == 0.0
    plain = ap.evaluate(model, x, target="cpu:threads=1", time_budget_s=0.05)
    assert math.isnan(plain.speedup) and plain.latency_clock == "wall"
    with pytest.raises(ap.TargetError, match="differs from the speedup meter's"):
        ap.evaluate(model, x, target="cpu:threads=2", speedup_meter=meter)


def test_a_drop_of_exactly_the_limit_is_not_broken_by_float_error() -> None:
    import torch

    from autoprune.evaluation import derived_metrics
    from autoprune.tasks._loaders import _top1

    outputs, labels = torch.zeros(2000, 3), torch.ones(2000, dtype=torch.long)
    outputs[:1634, 1] = 1.0  # 1634 of 2000 right: exactly 81.7
    assert _top1(outputs, labels) == 81.7
    outputs[1634:1654, 1] = 1.0  # 1654: 82.7
    assert _top1(outputs, labels) == 82.7
    # 82.7 - 81.7 is 1.0000000000000142 in floats; the drop is 1.0, within a 1-point constraint
    assert derived_metrics({"accuracy": 81.7}, {"accuracy": 82.7})["accuracy_drop"] == 1.0
    assert math.isnan(derived_metrics({"accuracy": 81.7}, {})["accuracy_drop"])
