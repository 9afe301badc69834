from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune.tasks import cache_dir


# ---------------------------------------------------------------------------- digits
def test_digits_task_fields(digits_task: ap.Task) -> None:
    task = digits_task
    assert isinstance(task, ap.Task)
    assert task.name == "digits"
    assert task.metric_name == "accuracy"
    assert task.example_inputs.shape == (32, 1, 8, 8)
    assert task.spec == {"name": "digits", "seed": 0, "width": 16, "batch_size": 32}
    assert task.model.features[0].out_channels == 16
    assert not task.model.training


def test_digits_is_trained_and_scores_validation_and_test_splits(digits_task: ap.Task) -> None:
    from autoprune.tasks._digits import digits_splits

    splits, _ = digits_splits()
    model = digits_task.model
    val, test = digits_task.evaluate(model), digits_task.test(model)  # type: ignore[misc]
    assert 90.0 <= val <= 100.0 and 90.0 <= test <= 100.0
    assert digits_task.evaluate(model) == val and digits_task.test(model) == test  # type: ignore[misc]
    with torch.no_grad():
        for name, score in (("val", val), ("test", test)):
            x, y = splits[name]
            assert score == pytest.approx(float((model(x).argmax(1) == y).float().mean()) * 100.0)
    # Latency batches come from the validation split, never from the held-out images.
    assert torch.equal(digits_task.example_inputs, splits["val"][0][:32])
    assert digits_task.scale == "percent"


def test_digits_splits_are_disjoint_stratified_and_fixed_by_seed() -> None:
    from autoprune.tasks._digits import digits_splits

    _, index = digits_splits()
    sizes = {k: len(v) for k, v in index.items()}
    assert sizes == {"train": 1077, "val": 270, "test": 450}
    parts = [set(v) for v in index.values()]
    assert set().union(*parts) == set(range(1797)) and sum(map(len, parts)) == 1797
    assert digits_splits()[1] == index
    assert digits_splits(split_seed=1)[1]["test"] != index["test"]
    splits, _ = digits_splits()
    assert torch.bincount(splits["val"][1]).min() >= 25  # stratified: every digit in validation


def test_digits_is_cached_by_seed(digits_task: ap.Task) -> None:
    files = sorted(p.name for p in cache_dir().glob("digits-*.pt"))
    assert any(f.startswith("digits-seed0-w16-") for f in files)
    assert str(cache_dir()) == os.environ["AUTOPRUNE_CACHE_DIR"]  # never the user's home
    again = ap.tasks.get("digits", width=16, batch_size=8)  # loads, does not retrain
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.model.state_dict().values(), digits_task.model.state_dict().values(), strict=True)
    )
    assert again.example_inputs.shape == (8, 1, 8, 8)


def test_data_is_drawn_once_then_read_from_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from autoprune.tasks._builtin import cached_data, cached_path
    from autoprune.tasks._digits import _digits_splits, digits_splits

    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path))
    calls: list[int] = []

    def make() -> dict[str, tuple[torch.Tensor, list[int]]]:
        calls.append(1)
        return {"a": (torch.arange(6.0).reshape(2, 3), [1, 2])}

    first = cached_data("thing", {"k": 1}, make)
    again = cached_data("thing", {"k": 1}, make)
    assert len(calls) == 1 and torch.equal(again["a"][0], first["a"][0]) and again["a"][1] == [1, 2]
    cached_data("thing", {"k": 2}, make)  # another key: drawn again, another file
    assert len(calls) == 2 and len(list(tmp_path.glob("thing-*.pt"))) == 2
    path = cached_path("thing", {"k": 1})
    path.write_bytes(b"not a tensor file")  # damaged: drawn again and replaced
    assert torch.equal(cached_data("thing", {"k": 1}, make)["a"][0], first["a"][0]) and len(calls) == 3
    assert torch.load(path, weights_only=True)["a"][1] == [1, 2]

    # The digits splits: read through scikit-learn once, the same tensors from the file after.
    splits, index = digits_splits()
    assert len(list(tmp_path.glob("digits-data-split0-*.pt"))) == 1
    monkeypatch.setattr("autoprune.tasks._digits._digits_splits", lambda seed: pytest.fail("drawn again"))
    cached, cached_index = digits_splits()
    assert cached_index == index == _digits_splits(0)[1]
    assert all(torch.equal(cached[k][0], splits[k][0]) and torch.equal(cached[k][1], splits[k][1]) for k in splits)


def test_parallel_builders_train_a_cached_model_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from autoprune.tasks import _builtin

    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path))
    trainings: list[int] = []
    make_runner = _builtin.make_runner

    def counted(*args: object, **kwargs: object) -> object:
        trainings.append(1)
        return make_runner(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_builtin, "make_runner", counted)
    with ThreadPoolExecutor(3) as pool:  # flock: separate descriptors exclude each other, threads too
        tasks = list(pool.map(lambda _: ap.tasks.get("digits", width=4, batch_size=8), range(3)))
    assert len(trainings) == 1
    first, *others = [t.model.state_dict() for t in tasks]
    assert all(torch.equal(first[k], other[k]) for other in others for k in first)


def test_fresh_model_is_a_new_unpruned_copy(digits_task: ap.Task) -> None:
    fresh = digits_task.fresh_model()
    assert fresh is not digits_task.model
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), digits_task.model.state_dict().values(), strict=True)
    )


def test_fine_tune_trains_in_place_and_is_deterministic(digits_task: ap.Task) -> None:
    a, b = digits_task.fresh_model(), digits_task.fresh_model()
    before = [p.detach().clone() for p in a.parameters()]
    digits_task.fine_tune(a, 3)
    digits_task.fine_tune(b, 3)
    assert any(not torch.equal(p, q) for p, q in zip(before, a.parameters(), strict=True))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not a.training


def test_digits_prune_and_fine_tune(digits_task: ap.Task) -> None:
    task = digits_task
    schedule = ap.uniform_schedule(task.model, task.example_inputs, amount=0.5, steps=2, fine_tune_steps=20)
    pruned = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs, fine_tune=task.fine_tune)
    assert pruned.features[0].out_channels == 8
    assert task.evaluate(pruned) > 50.0
    again = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs, fine_tune=task.fine_tune)
    assert all(torch.equal(p, q) for p, q in zip(pruned.parameters(), again.parameters(), strict=True))


def test_from_spec_rebuilds_the_task(digits_task: ap.Task) -> None:
    task = ap.tasks.from_spec(digits_task.spec)
    assert task.spec == digits_task.spec
    with pytest.raises(ap.TaskError, match="has no 'name'"):
        ap.tasks.from_spec({"seed": 0})


def test_unknown_built_in_task_lists_the_known_ones() -> None:
    with pytest.raises(ap.TaskError, match=r"unknown task 'digitz'; built-in tasks: digits"):
        ap.tasks.get_task("digitz")
    assert ap.tasks.task_names() == ["digits", "shapes-resnet", "tinylm"]


def test_registries_share_one_idiom(monkeypatch: pytest.MonkeyPatch) -> None:
    """register_x / get_x / x_names, for tasks, latency backends and the reference models;
    the older short names of tasks and models are the same functions."""
    from autoprune import tasks as tasks_module
    from autoprune.evaluation import _backends
    from autoprune.testing import models as zoo

    monkeypatch.setattr(tasks_module, "_REGISTRY", dict(tasks_module._REGISTRY))
    made: list[dict[str, int]] = []

    @ap.tasks.register_task("made-here")
    def _factory(width: int = 3) -> ap.Task:
        made.append({"width": width})
        return ap.Task(name="made-here", model=torch.nn.Linear(width, 2), example_inputs=torch.zeros(1, width), evaluate=lambda m: 1.0)

    task = ap.tasks.get_task("made-here", width=5)
    assert made == [{"width": 5}] and task.spec["name"] == "made-here" and task.model.in_features == 5
    assert "made-here" in ap.tasks.task_names()
    assert (ap.tasks.get, ap.tasks.names, ap.tasks.register) == (ap.tasks.get_task, ap.tasks.task_names, ap.tasks.register_task)
    assert {"dense", "torchscript", "onnxruntime", "compile"} <= set(_backends.backend_names())
    assert type(_backends.get_backend("dense")).__name__ == "DenseBackend"

    monkeypatch.setattr(zoo, "_REGISTRY", dict(zoo._REGISTRY))
    @zoo.register_model("tiny-mlp", (6,))
    class _TinyMLP(torch.nn.Sequential):
        def __init__(self) -> None:
            super().__init__(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))

    model, x = zoo.get_model("tiny-mlp", batch_size=3)
    assert isinstance(model, _TinyMLP) and x.shape == (3, 6) and model(x).shape == (3, 2)
    assert zoo.model_names()[-1] == "tiny-mlp" and (zoo.get, zoo.names) == (zoo.get_model, zoo.model_names)


# ---------------------------------------------------------------------------- user tasks
USER_MODULE = """
import torch
from torch import nn
import autoprune as ap

def make(width=4):
    model = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))
    return ap.Task(name="mine", model=model, example_inputs=torch.randn(2, 3), evaluate=lambda m: 1.0)

def not_a_task():
    return 42

def broken():
    raise RuntimeError("no data here")

VALUE = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_tasks_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / f"{name}_bad.py").write_text("raise ValueError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)
    sys.modules.pop(f"{name}_bad", None)


def test_user_task_loads_from_module_factory(user_module: str) -> None:
    task = ap.tasks.get(f"{user_module}:make", width=6)
    assert isinstance(task, ap.Task)
    assert task.model[0].out_features == 6
    assert task.spec == {"name": f"{user_module}:make", "width": 6}
    assert ap.tasks.load(f"{user_module}:make").model[0].out_features == 4
    pruned = ap.apply_schedule(
        task.model, ap.Schedule(layers={"0": ap.LayerPlan("structured", 0.5)}), example_inputs=task.example_inputs
    )
    assert isinstance(pruned[0], nn.Linear) and pruned[0].out_features == 3


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        (":make", "must look like 'package.module:factory'"),
        ("{mod}:", "must look like 'package.module:factory'"),
        ("{mod}:missing", "has no callable 'missing'"),
        ("{mod}:VALUE", "has no callable 'VALUE'"),
        ("{mod}:not_a_task", "returned int, not autoprune.Task"),
        ("{mod}:broken", "failed: RuntimeError: no data here"),
        ("{mod}_bad:make", "importing module '{mod}_bad'.*failed: ValueError: boom at import"),
    ],
)
def test_bad_task_paths_are_clear_errors(user_module: str, path: str, needle: str) -> None:
    with pytest.raises(ap.TaskError, match=needle.format(mod=user_module)):
        ap.tasks.get(path.format(mod=user_module))


def test_factory_options_are_checked(user_module: str) -> None:
    with pytest.raises(ap.TaskError, match=r"rejected options \['depth'\]"):
        ap.tasks.get(f"{user_module}:make", depth=3)
