"""The built-in shapes-resnet task: generated data, splits, the trained model, what pruning costs."""

from __future__ import annotations

import pytest
import torch

import autoprune as ap
from autoprune.tasks import _shapes
from autoprune.tasks._shapes import CLASSES, STANDARD_FINE_TUNE_STEPS, draw_shapes, shapes_splits


def test_drawing_is_fixed_by_seed() -> None:
    x, y = draw_shapes(64, seed=3)
    again_x, again_y = draw_shapes(64, seed=3)
    other_x, _ = draw_shapes(64, seed=4)
    assert x.shape == (64, 1, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, again_x) and torch.equal(y, again_y)
    assert not torch.equal(x, other_x)
    assert 0 <= int(y.min()) and int(y.max()) < len(CLASSES)


def test_every_class_is_drawn_about_equally_often() -> None:
    _, y = draw_shapes(5000, seed=0)
    counts = torch.bincount(y, minlength=len(CLASSES))
    assert int(counts.min()) > 400 and int(counts.max()) < 600


def test_splits_are_disjoint_sized_and_fixed_by_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = {"train": 2000, "val": 300, "test": 300}  # the real sizes draw 25000 images: slow here
    monkeypatch.setattr(_shapes, "SPLIT_SIZES", sizes)
    splits = shapes_splits()
    assert {k: len(v[1]) for k, v in splits.items()} == sizes
    rows = {name: {hash(row.numpy().tobytes()) for row in x.flatten(1)} for name, (x, _) in splits.items()}
    assert all(len(r) == sizes[name] for name, r in rows.items())  # no image twice within a split
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    again, other = shapes_splits(), shapes_splits(split_seed=1)
    assert all(torch.equal(splits[k][0], again[k][0]) for k in splits)
    assert not torch.equal(splits["test"][0], other["test"][0])


def test_the_model_is_residual_with_a_stem_and_stages() -> None:
    model = _shapes.ShapesResNet()
    assert [name for name, _ in model.named_children()] == ["stem", "stages", "head"]
    assert len(model.stages) == 3
    assert model(torch.zeros(2, 1, 24, 24)).shape == (2, len(CLASSES))
    # Residual additions couple channels: Torch-Pruning groups every block's output with its input.
    infos = ap.prunable_layers(model.eval(), torch.zeros(2, 1, 24, 24))
    assert any("structured" in info.methods for info in infos)


def test_training_is_reproducible(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setattr(_shapes, "_TRAIN_STEPS", 15)
    monkeypatch.setattr(_shapes, "SPLIT_SIZES", {"train": 512, "val": 128, "test": 128})
    first = _shapes.make_shapes_resnet(seed=5, width=4)
    for path in ap.tasks.cache_dir().glob("shapes-resnet-seed5-w4-*.pt"):
        path.unlink()  # train again, not load
    second = _shapes.make_shapes_resnet(seed=5, width=4)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert first.spec == {"name": "shapes-resnet", "seed": 5, "width": 4, "blocks": 1, "batch_size": 64}


@pytest.mark.slow
def test_trained_task_is_accurate_and_pruning_it_costs_points() -> None:
    task = ap.tasks.get("shapes-resnet")
    assert task.name == "shapes-resnet" and task.scale == "percent"
    base = task.test(task.model)  # type: ignore[misc]
    assert 85.0 <= base <= 97.0
    assert 85.0 <= task.evaluate(task.model) <= 97.0
    schedule = ap.uniform_schedule(
        task.model, task.example_inputs, amount=0.5, fine_tune_steps=STANDARD_FINE_TUNE_STEPS
    )
    pruned = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs, fine_tune=task.fine_tune)
    assert base - task.test(pruned) >= 2.0  # type: ignore[misc]
    assert task.test(pruned) > 100 / len(CLASSES) + 20  # and fine-tuning did recover something
