from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune.preflight import ROOT_TYPES, analyse
from autoprune.testing import models as zoo

ZOO = ["cnn", "resnet", "mobilenetv2", "transformer"]


class _Scale(nn.Module):
    """A custom layer holding an unwrapped per-channel parameter."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class CustomNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.scale = _Scale(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(32, 8, 3, padding=1)
        self.mix = nn.Parameter(torch.randn(8, 8))  # a matrix: which dim is the channel?
        self.unused = nn.Linear(4, 4)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _Square.apply(self.conv2(self.scale(self.conv1(x))))
        x = self.conv3(x).mean((2, 3)) @ self.mix
        return self.fc(x)


def _by_name(model: nn.Module, x: torch.Tensor) -> dict[str, ap.LayerInfo]:
    return {i.name: i for i in ap.prunable_layers(model, x)}


# ---------------------------------------------------------------------------- zoo models
@pytest.mark.parametrize("name", ZOO)
def test_every_weight_is_covered_exactly_once(name: str) -> None:
    model, x = zoo.get(name, batch_size=2)
    infos = ap.prunable_layers(model, x)
    weights = [w for i in infos for w in i.weights]
    assert len(weights) == len(set(weights))
    expected = set()
    for mname, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            expected |= {(mname, "in_proj_weight"), (f"{mname}.out_proj", "weight")}
        elif isinstance(module, ROOT_TYPES) and not mname.endswith("out_proj"):
            expected.add((mname, "weight"))
    assert set(weights) == expected
    for info in infos:
        assert info.params == sum(model.get_submodule(m).get_parameter(p).numel() for m, p in info.weights)


@pytest.mark.parametrize("name", ZOO)
def test_output_layer_is_unstructured_only(name: str) -> None:
    model, x = zoo.get(name, batch_size=2)
    infos = ap.prunable_layers(model, x)
    out = [i for i in infos if i.reason and "output" in i.reason]
    assert len(out) == 1
    assert out[0].methods == ("unstructured",)
    assert out[0].channels == 10
    assert all(i.methods == ("structured", "unstructured") for i in infos if i is not out[0])


@pytest.mark.parametrize("name", ZOO)
def test_max_amount_keeps_one_channel_per_group(name: str) -> None:
    model, x = zoo.get(name, batch_size=2)
    for info in ap.prunable_layers(model, x):
        if "structured" in info.methods:
            assert info.max_amount == math.floor((1 - info.channel_groups / info.channels) * 100) / 100
            assert info.channels * (1 - info.max_amount) >= info.channel_groups


def test_plain_cnn_entries() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    infos = _by_name(model, x)
    assert list(infos) == [
        "features.0.0",
        "features.1.0",
        "features.3.0",
        "features.4.0",
        "features.6.0",
        "classifier.1",
        "classifier.3",
    ]
    assert [i.channels for i in infos.values()] == [64, 64, 128, 128, 256, 128, 10]
    assert infos["features.0.0"].members == ("features.0.0", "features.0.1")  # conv + its BN
    assert infos["features.0.0"].max_amount == 0.98
    assert infos["features.0.0"].type == "Conv2d"


def test_residual_additions_couple_the_stem_with_the_block_outputs() -> None:
    model, x = zoo.get("resnet", batch_size=2)
    infos = _by_name(model, x)
    assert set(infos["stem.0"].members) == {
        "stem.0",
        "stem.1",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer1.1.conv2",
        "layer1.1.bn2",
    }
    assert set(infos["layer2.0.shortcut.0"].members) >= {"layer2.0.conv2", "layer2.1.conv2", "layer2.0.shortcut.1"}
    assert infos["layer1.0.conv1"].members == ("layer1.0.conv1", "layer1.0.bn1")


def test_depthwise_conv_is_coupled_with_its_expansion() -> None:
    model, x = zoo.get("mobilenetv2", batch_size=2)
    infos = _by_name(model, x)
    dw = infos["blocks.0.block.3"]
    assert set(dw.members) == {"blocks.0.block.0", "blocks.0.block.1", "blocks.0.block.3", "blocks.0.block.4"}
    assert dw.channels == 128
    assert dw.channel_groups == 1
    # The inverted residual's output couples with the stem.
    assert "stem.0" in infos["blocks.0.block.6"].members


def test_attention_heads_set_the_channel_groups() -> None:
    model, x = zoo.get("transformer", batch_size=2)
    infos = _by_name(model, x)
    stream = [i for i in infos.values() if "blocks.0.attn" in i.members]
    assert len(stream) == 1
    assert stream[0].channel_groups == 4
    assert stream[0].channels == 128
    assert {"embed", "blocks.1.attn", "norm", "blocks.0.norm1"} <= set(stream[0].members)
    assert ("blocks.0.attn", "in_proj_weight") in stream[0].weights
    assert ("blocks.0.attn.out_proj", "weight") in stream[0].weights
    assert infos["blocks.0.mlp.0"].channels == 512


def test_as_dict_is_plain_data() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    d = ap.prunable_layers(model, x)[0].as_dict()
    assert d["name"] == "features.0.0"
    assert d["methods"] == ["structured", "unstructured"]
    assert d["members"] == ["features.0.0", "features.0.1"]


def test_preflight_leaves_the_model_as_it_was() -> None:
    model, x = zoo.get("resnet", batch_size=2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ap.prunable_layers(model, x)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats too


# ---------------------------------------------------------------------------- custom layers
def test_unwrapped_parameter_is_listed_with_a_reason() -> None:
    model, x = CustomNet().eval(), torch.randn(2, 3, 8, 8)
    infos = _by_name(model, x)
    scale = infos["scale"]
    assert scale.methods == ()
    assert "unwrapped parameter(s) gamma" in scale.reason
    assert "conv1" in scale.reason
    assert infos["mix"].methods == ()
    assert "unwrapped parameter mix" in infos["mix"].reason
    # A per-channel parameter has one obvious channel dim: its group stays structured.
    assert infos["conv1"].methods == ("structured", "unstructured")


def test_custom_op_and_ambiguous_parameter_block_structured_pruning() -> None:
    model, x = CustomNet().eval(), torch.randn(2, 3, 8, 8)
    infos = _by_name(model, x)
    assert infos["conv2"].methods == ("unstructured",)
    assert "custom autograd op" in infos["conv2"].reason
    assert "_SquareBackward" in infos["conv2"].reason
    assert infos["conv3"].methods == ("unstructured",)
    assert "mix (8, 8)" in infos["conv3"].reason


def test_unused_layer_is_unstructured_only() -> None:
    model, x = CustomNet().eval(), torch.randn(2, 3, 8, 8)
    info = _by_name(model, x)["unused"]
    assert info.methods == ("unstructured",)
    assert "not used in the traced forward pass" in info.reason


def test_grouped_conv_channel_groups(grouped_net: tuple[nn.Module, torch.Tensor]) -> None:
    infos = _by_name(*grouped_net)
    assert infos["b"].channel_groups == 4
    assert infos["b"].max_amount == 0.87  # floor((1 - 4/32) * 100) / 100


def test_analysis_reports_skipped_and_heads() -> None:
    analysis = analyse(CustomNet().eval(), torch.randn(2, 3, 8, 8))
    assert dict(analysis.skipped).keys() == {"scale", "mix"}
    model, x = zoo.get("transformer", batch_size=2)
    assert analyse(model, x).num_heads == {"blocks.0.attn": 4, "blocks.1.attn": 4}


# ---------------------------------------------------------------------------- errors
class _NumpyOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.l(x).detach().numpy()


class _Fails(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or torch.is_grad_enabled():
            raise RuntimeError("custom kernel has no autograd support")
        return self.l(x)


def test_non_tensor_output_is_a_clear_preflight_error() -> None:
    with pytest.raises(ap.PreflightError, match=r"cannot trace _NumpyOut: its forward must return a tensor.*ndarray"):
        ap.prunable_layers(_NumpyOut(), torch.randn(2, 4))


def test_wrong_example_inputs_are_named() -> None:
    model, _ = zoo.get("cnn")
    with pytest.raises(
        ap.PreflightError, match=r"cannot run PlainCNN on the example inputs \(tensor of shape \(1, 4, 8, 8\)\)"
    ):
        ap.prunable_layers(model, torch.randn(1, 4, 8, 8))


def test_untraceable_model_is_offered_unstructured_with_the_reason() -> None:
    infos = ap.prunable_layers(_Fails(), torch.randn(2, 4))
    assert [(i.name, i.methods, i.params) for i in infos] == [("l", ("unstructured",), 16)]
    assert infos[0].reason == (
        "structured pruning not possible: Torch-Pruning cannot trace _Fails "
        "(RuntimeError: custom kernel has no autograd support)"
    )
    pruned = ap.apply_schedule(
        _Fails(), ap.Schedule(layers={"l": ap.LayerPlan("unstructured", 0.5)}), example_inputs=torch.randn(2, 4)
    )
    assert int((pruned.l.weight == 0).sum()) == 8


# ---------------------------------------------------------------------------- outputs and inputs
class _DictNet(nn.Module):
    """Takes keyword inputs and returns a dict, as Hugging Face models do."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 16)
        self.head = nn.Linear(16, 3)
        self.aux = nn.Linear(16, 5)

    def forward(self, features: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.body(features * scale))
        return {"logits": self.head(h), "aux": self.aux(h), "note": "not a tensor"}  # type: ignore[dict-item]


def test_dict_inputs_and_outputs_are_traced_through_every_returned_tensor() -> None:
    x = {"features": torch.randn(2, 4), "scale": torch.ones(2, 1)}
    infos = {i.name: i for i in ap.prunable_layers(_DictNet(), x)}
    for out in ("head", "aux"):  # both are returned: their widths stay
        assert infos[out].methods == ("unstructured",)
        assert infos[out].reason == "its output channels are the model's output"
    assert infos["body"].methods == ("structured", "unstructured")
    assert infos["body"].channels == 16
    pruned = ap.apply_schedule(
        _DictNet(), ap.Schedule(layers={"body": ap.LayerPlan("structured", 0.5)}), example_inputs=x
    )
    assert (pruned.body.out_features, pruned.head.in_features, pruned.aux.in_features) == (8, 8, 8)
    assert pruned(**x)["logits"].shape == (2, 3)
    assert pruned(**x)["aux"].shape == (2, 5)


def test_output_that_names_nothing_is_a_preflight_error() -> None:
    x = {"features": torch.randn(2, 4), "scale": torch.ones(2, 1)}
    with pytest.raises(ap.PreflightError, match=r"cannot trace _DictNet: .*'missing' is not a tensor"):
        ap.prunable_layers(_DictNet(), x, output="missing")
