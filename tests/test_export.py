"""save_pruned / load_pruned: plain files, rebuilt architecture, no pickle."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.utils import prune

import autoprune as ap
from autoprune.evaluation import count_macs, size_stats
from autoprune.export import ArchitectureMismatchError, ExportError, UnsafeWeightsError
from autoprune.tasks._digits import DigitsNet
from autoprune.testing import models as zoo

SCHEDULE = ap.Schedule(
    layers={
        "features.0": ap.LayerPlan("structured", 0.25),
        "features.7": ap.LayerPlan("structured", 0.5, norm=2),
        "classifier.1": ap.LayerPlan("unstructured", 0.6),
    },
    steps=2,
    shape="cubic",
    fine_tune_steps=5,
)


@pytest.fixture(scope="module")
def pruned(digits_task: ap.Task) -> torch.nn.Module:
    return ap.apply_schedule(
        digits_task.model, SCHEDULE, example_inputs=digits_task.example_inputs, fine_tune=digits_task.fine_tune
    ).eval()


@pytest.fixture
def saved(tmp_path: Path, pruned: torch.nn.Module, digits_task: ap.Task) -> Path:
    return ap.save_pruned(
        pruned,
        tmp_path / "out",
        schedule=SCHEDULE,
        metrics={"accuracy": 97.5, "latency_ms": float("nan")},
        example_inputs=digits_task.example_inputs,
    )


def test_save_writes_plain_files(saved: Path, pruned: torch.nn.Module, digits_task: ap.Task) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "architecture.json",
        "metrics.json",
        "schedule.json",
        "weights.pt",
    ]
    state = torch.load(saved / "weights.pt", weights_only=True)
    assert type(state) is dict and all(isinstance(v, torch.Tensor) for v in state.values())
    assert ap.Schedule.from_json((saved / "schedule.json").read_text()) == SCHEDULE
    assert json.loads((saved / "metrics.json").read_text()) == {"accuracy": 97.5, "latency_ms": None}
    arch = json.loads((saved / "architecture.json").read_text())
    stats = size_stats(pruned)
    assert arch["params"] == stats["params"] and arch["nonzero_params"] == stats["nonzero_params"]
    assert arch["macs"] == count_macs(pruned, digits_task.example_inputs)
    assert arch["example_inputs"] == {"type": "tensor", "shape": [32, 1, 8, 8], "dtype": "torch.float32"}
    assert arch["tensors"]["features.0.weight"]["shape"] == [12, 1, 3, 3]
    assert arch["layers"]["features.0"] == {"type": "Conv2d", "tensors": {"weight": [12, 1, 3, 3]}}
    assert arch["torch_version"] == torch.__version__ and arch["autoprune_version"] == ap.__version__


@pytest.mark.parametrize("give_inputs", [False, True])
def test_reload_matches_the_in_memory_model(
    saved: Path, pruned: torch.nn.Module, digits_task: ap.Task, give_inputs: bool
) -> None:
    inputs = digits_task.example_inputs if give_inputs else None
    model = ap.load_pruned(saved, digits_task.fresh_model, example_inputs=inputs)
    assert not model.training
    x = digits_task.example_inputs
    with torch.inference_mode():
        torch.testing.assert_close(model(x), pruned(x), rtol=0, atol=0)
    assert size_stats(model) == size_stats(pruned)
    assert count_macs(model, x) == count_macs(pruned, x)
    for (name, a), (_, b) in zip(model.state_dict().items(), pruned.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_unpruned_factory_weights_do_not_matter(saved: Path, pruned: torch.nn.Module) -> None:
    # A randomly initialised model of the same architecture rebuilds the same shapes.
    model = ap.load_pruned(saved, lambda: DigitsNet(16))
    x = torch.randn(4, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), pruned(x))


def _tamper(path: Path, change: Any) -> None:
    state = torch.load(path / "weights.pt", weights_only=True)
    change(state)
    torch.save(state, path / "weights.pt")


def test_wrong_shape_names_the_first_mismatched_tensor(saved: Path, digits_task: ap.Task) -> None:
    def grow(state: dict[str, torch.Tensor]) -> None:
        state["features.3.weight"] = torch.zeros(32, 16, 3, 3)
        state["classifier.3.weight"] = torch.zeros(11, 32)

    _tamper(saved, grow)
    with pytest.raises(ArchitectureMismatchError) as info:
        ap.load_pruned(saved, digits_task.fresh_model)
    message = str(info.value)
    assert (
        "'features.3.weight' has shape [32, 12, 3, 3] in the rebuilt model but [32, 16, 3, 3] in weights.pt" in message
    )
    assert "classifier" not in message  # the first mismatch only
    assert "\n" not in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s.pop("features.4.running_var"),
            r"'features.4.running_var' of the rebuilt model is missing from weights.pt",
        ),
        (lambda s: s.update(extra=torch.zeros(1)), r"'extra' of weights.pt is not in the rebuilt model"),
    ],
)
def test_missing_and_unexpected_keys_are_named(saved: Path, digits_task: ap.Task, change: Any, expected: str) -> None:
    _tamper(saved, change)
    with pytest.raises(ArchitectureMismatchError, match=expected):
        ap.load_pruned(saved, digits_task.fresh_model)


def test_another_model_factory_is_caught(saved: Path) -> None:
    with pytest.raises(
        ArchitectureMismatchError,
        match=r"'features.0.weight' has shape \[12, 1, 3, 3\] in architecture.json but \[6, 1, 3, 3\]",
    ):
        ap.load_pruned(saved, lambda: DigitsNet(8))


class _Payload:
    """Unpickling this would create a file: the loader must refuse before running it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("kind", ["module", "payload"])
def test_pickled_objects_are_refused(saved: Path, pruned: torch.nn.Module, digits_task: ap.Task, kind: str) -> None:
    marker = saved.parent / "executed"
    obj: Any = pruned if kind == "module" else {"features.0.weight": _Payload(marker)}
    torch.save(obj, saved / "weights.pt")
    with pytest.raises(UnsafeWeightsError, match="holds more than tensors, a pickled object") as info:
        ap.load_pruned(saved, digits_task.fresh_model)
    assert "\n" not in str(info.value)
    assert ("DigitsNet" if kind == "module" else "mkdir") in str(info.value)
    assert not marker.exists()


def test_bad_folders_get_clear_errors(tmp_path: Path, saved: Path, digits_task: ap.Task) -> None:
    with pytest.raises(ExportError, match="not a folder written by save_pruned"):
        ap.load_pruned(tmp_path / "nowhere", digits_task.fresh_model)
    (saved / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(ExportError, match="cannot read .*: not a PyTorch weights file"):
        ap.load_pruned(saved, digits_task.fresh_model)
    (saved / "architecture.json").unlink()
    with pytest.raises(ExportError, match="architecture.json' is missing"):
        ap.load_pruned(saved, digits_task.fresh_model)


def test_models_with_masks_are_refused(tmp_path: Path) -> None:
    model = DigitsNet(8)
    prune.l1_unstructured(model.features[0], "weight", amount=0.5)
    with pytest.raises(ExportError, match="'features.0.weight' still carries a torch.nn.utils.prune mask"):
        ap.save_pruned(model, tmp_path / "out", schedule=SCHEDULE)
    assert not (tmp_path / "out").exists()


def test_onnx_without_the_package_says_what_to_install(
    tmp_path: Path, pruned: torch.nn.Module, digits_task: ap.Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    out = tmp_path / "onnx"
    with pytest.raises(ExportError, match="pip install onnx"):
        ap.save_pruned(pruned, out, schedule=SCHEDULE, example_inputs=digits_task.example_inputs, onnx=True)
    assert not out.exists()  # nothing half-written


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs the onnx package")
def test_onnx_export(tmp_path: Path, pruned: torch.nn.Module, digits_task: ap.Task) -> None:
    import onnx

    out = ap.save_pruned(pruned, tmp_path, schedule=SCHEDULE, example_inputs=digits_task.example_inputs, onnx=True)
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")))


def test_whole_head_attention_reloads(tmp_path: Path) -> None:
    # the heads' count lives in the module, not the state dict: re-applying the schedule
    # to a fresh model rebuilds it, and the reloaded model computes the same outputs
    model, x = zoo.get("transformer", batch_size=2)
    schedule = ap.Schedule(
        layers={"blocks.1.mlp.2": ap.LayerPlan("structured", 0.5), "blocks.0.mlp.0": ap.LayerPlan("unstructured", 0.5)},
        attention_heads=True,
    )
    pruned = ap.apply_schedule(model, schedule, example_inputs=x).eval()
    ap.save_pruned(pruned, tmp_path / "heads", schedule=schedule, example_inputs=x)

    def factory() -> torch.nn.Module:
        return zoo.get("transformer", batch_size=2, seed=5)[0]  # other weights: they are replaced

    reloaded = ap.load_pruned(tmp_path / "heads", factory).eval()
    assert [b.attn.num_heads for b in reloaded.blocks] == [2, 2]
    assert [b.attn.head_dim for b in reloaded.blocks] == [32, 32]
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(x), pruned(x))
