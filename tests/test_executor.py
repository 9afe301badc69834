from __future__ import annotations

import warnings

import pytest
import torch
import torch_pruning as tp
from torch import nn

import autoprune as ap
from autoprune.executor import resolve_plans
from autoprune.preflight import analyse
from autoprune.schedule import step_amounts
from autoprune.testing import models as zoo

ZOO = ["cnn", "resnet", "mobilenetv2", "transformer"]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _out(module: nn.Module) -> int:
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels  # type: ignore[return-value]


def _keep(channels: int, amount: float, multiple: int = 1) -> int:
    keep = round(channels * (1 - amount))
    return min(channels, max(multiple, round(keep / multiple) * multiple))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def _assert_plain(model: nn.Module) -> None:
    keys = list(model.state_dict())
    assert not [k for k in keys if k.endswith(("_orig", "_mask"))]
    for module in model.modules():
        assert not module._forward_pre_hooks
        for name in ("weight", "in_proj_weight"):
            if getattr(module, name, None) is not None:
                assert isinstance(getattr(module, name), nn.Parameter)


def _sgd_fine_tune(x: torch.Tensor) -> ap.executor.FineTune:
    """Trains on random targets with SGD and a noisy gradient (uses the global RNG)."""

    def fine_tune(model: nn.Module, steps: int) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            out = model(x)
            loss = (out - torch.randn_like(out)).pow(2).mean()
            loss.backward()
            opt.step()
        model.eval()

    return fine_tune


# ---------------------------------------------------------------------------- structured
@pytest.mark.parametrize("name", ZOO)
def test_structured_half_gives_expected_channels_and_3x_fewer_params(name: str) -> None:
    model, x = zoo.get(name, batch_size=2)
    infos = [i for i in ap.prunable_layers(model, x) if "structured" in i.methods]
    schedule = ap.uniform_schedule(model, x, amount=0.5)
    pruned = ap.apply_schedule(model, schedule, example_inputs=x)

    for info in infos:
        expected = _keep(info.channels, 0.5, info.channel_groups)
        assert _out(pruned.get_submodule(info.name)) == expected == info.channels // 2
        for member in info.members:
            sub = pruned.get_submodule(member)
            if isinstance(sub, nn.BatchNorm2d):
                assert sub.num_features == expected
    assert _params(model) / _params(pruned) >= 3.0
    macs_before, _ = tp.utils.count_ops_and_params(model, x)
    macs_after, _ = tp.utils.count_ops_and_params(pruned, x)
    assert macs_before / macs_after >= 3.0
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape


def test_plain_cnn_exact_shapes() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    pruned = ap.apply_schedule(model, ap.uniform_schedule(model, x, amount=0.5), example_inputs=x)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128)]
    assert (pruned.classifier[1].in_features, pruned.classifier[1].out_features) == (128, 64)
    assert (pruned.classifier[3].in_features, pruned.classifier[3].out_features) == (64, 10)


@pytest.mark.parametrize("name", ZOO)
def test_pruned_model_runs_forward_and_backward(name: str) -> None:
    model, x = zoo.get(name, batch_size=2)
    pruned = ap.apply_schedule(model, ap.uniform_schedule(model, x, amount=0.7), example_inputs=x)
    pruned.train()
    out = pruned(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    grads = [p.grad for p in pruned.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ZOO)
def test_input_model_is_untouched(name: str) -> None:
    model, x = zoo.get(name, batch_size=2)
    model.train()
    before = _state(model)
    modules_before = [type(m) for m in model.modules()]
    layers = {
        i.name: ap.LayerPlan("structured" if "structured" in i.methods else "unstructured", 0.4)
        for i in ap.prunable_layers(model, x)
    }
    fine_tune = _sgd_fine_tune(x)
    ap.apply_schedule(
        model, ap.Schedule(layers=layers, steps=2, fine_tune_steps=1), example_inputs=x, fine_tune=fine_tune
    )
    assert _same_state(before, _state(model))
    assert [type(m) for m in model.modules()] == modules_before
    assert model.training
    _assert_plain(model)


@pytest.mark.parametrize("importance", ["magnitude", "lamp", "random"])
@pytest.mark.parametrize("name", ZOO)
def test_every_importance_works(name: str, importance: str) -> None:
    model, x = zoo.get(name, batch_size=1)
    schedule = ap.uniform_schedule(model, x, amount=0.3, importance=importance, seed=1)
    pruned = ap.apply_schedule(model, schedule, example_inputs=x)
    for info in ap.prunable_layers(model, x):
        if "structured" in info.methods:
            assert _out(pruned.get_submodule(info.name)) == _keep(info.channels, 0.3, info.channel_groups)
    with torch.no_grad():
        assert pruned(x).shape == (1, 10)


def test_magnitude_keeps_the_largest_channels() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6, bias=False)
            self.b = nn.Linear(6, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    model = Two()
    with torch.no_grad():
        scale = torch.tensor([1.0, 5.0, 0.1, 4.0, 0.2, 3.0])
        model.a.weight.copy_(scale[:, None] * torch.ones(6, 4))
        model.b.weight.fill_(1.0)
    for norm in (1, 2):
        schedule = ap.Schedule(layers={"a": ap.LayerPlan("structured", 0.5, norm=norm)})
        pruned = ap.apply_schedule(model, schedule, example_inputs=torch.randn(1, 4))
        assert sorted(pruned.a.weight[:, 0].tolist()) == [3.0, 4.0, 5.0]


@pytest.mark.parametrize("amount", [0.3, 0.5])
def test_round_to_gives_channel_multiples(amount: float) -> None:
    model, x = zoo.get("cnn", batch_size=1)
    pruned = ap.apply_schedule(model, ap.uniform_schedule(model, x, amount=amount, round_to=8), example_inputs=x)
    counts = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(c % 8 == 0 for c in counts)
    assert counts == [_keep(c, amount, 8) for c in (64, 64, 128, 128, 256)]
    assert pruned.classifier[1].out_features % 8 == 0


@pytest.mark.parametrize(("amount", "round_to"), [(0.3, None), (0.5, None), (0.7, None), (0.3, 8)])
def test_attention_embed_dim_stays_divisible_by_heads(amount: float, round_to: int | None) -> None:
    model, x = zoo.get("transformer", batch_size=2)
    schedule = ap.uniform_schedule(model, x, amount=amount, round_to=round_to)
    pruned = ap.apply_schedule(model, schedule, example_inputs=x)
    attns = [m for m in pruned.modules() if isinstance(m, nn.MultiheadAttention)]
    multiple = 4 * (round_to or 1)  # round_to applies per head
    for attn in attns:
        assert attn.num_heads == 4
        assert attn.embed_dim == _keep(128, amount, multiple)
        assert attn.embed_dim % attn.num_heads == 0
        assert attn.head_dim * attn.num_heads == attn.embed_dim
        assert attn.in_proj_weight.shape == (3 * attn.embed_dim, attn.embed_dim)
        if round_to:
            assert attn.head_dim % round_to == 0
    pruned.train()
    out = pruned(x)
    assert out.shape == (2, 10)
    out.sum().backward()


def test_attention_heads_removes_whole_heads() -> None:
    model, x = zoo.get("transformer", batch_size=2)
    residual = "blocks.1.mlp.2"  # the residual-stream group: embedding, norms, both attentions
    plan = ap.Schedule(layers={residual: ap.LayerPlan("structured", 0.5)}, attention_heads=True)
    pruned = ap.apply_schedule(model, plan, example_inputs=x)
    for block in pruned.blocks:
        attn = block.attn
        assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (2, 32, 64)
        assert attn.in_proj_weight.shape == (3 * 64, 64)
    # which residual channels survive: the embedding's rows tell (it is in the group)
    kept = [j for j in range(128) if any(torch.equal(model.embed.weight[j], row) for row in pruned.embed.weight)]
    heads = sorted({j // 32 for j in kept})
    assert len(heads) == 2 and kept == [h * 32 + d for h in heads for d in range(32)]
    # each attention keeps those heads' q, k and v rows whole (restricted to the kept inputs)
    rows = torch.tensor(kept)
    for before, after in zip(model.blocks, pruned.blocks, strict=True):
        w = before.attn.in_proj_weight
        expected = torch.cat([w[offset + rows][:, rows] for offset in (0, 128, 256)])
        torch.testing.assert_close(after.attn.in_proj_weight, expected)
        torch.testing.assert_close(after.attn.out_proj.weight, before.attn.out_proj.weight[rows][:, rows])
    pruned.train()
    out = pruned(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    # the default keeps every head and shortens each one instead
    dims = ap.apply_schedule(model, ap.Schedule(layers=plan.layers), example_inputs=x)
    assert (dims.blocks[0].attn.num_heads, dims.blocks[0].attn.head_dim) == (4, 16)
    # iterative: 4 -> 3 -> 2 heads over two linear steps; at least one head always stays
    seen: list[int] = []
    ap.apply_schedule(
        model,
        ap.Schedule(layers=plan.layers, attention_heads=True, steps=2, shape="linear"),
        example_inputs=x,
        on_step=lambda m, step, steps: seen.append(m.blocks[0].attn.num_heads),
    )
    assert seen == [3, 2]
    most = ap.Schedule(layers={residual: ap.LayerPlan("structured", 0.95)}, attention_heads=True)
    assert ap.apply_schedule(model, most, example_inputs=x).blocks[1].attn.num_heads == 1
    # plain data: the choice round-trips and shows in the summary
    assert ap.Schedule.from_json(plan.to_json()) == plan and "whole heads" in plan.summary()
    older = plan.to_dict()
    del older["attention_heads"]  # schedules stored before the option existed still load
    assert ap.Schedule.from_dict(older).attention_heads is False
    with pytest.raises(ap.ScheduleError, match="attention_heads"):
        ap.Schedule(attention_heads="yes")  # type: ignore[arg-type]


def test_grouped_conv_keeps_groups_whole(grouped_net: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = grouped_net
    pruned = ap.apply_schedule(model, ap.uniform_schedule(model, x, amount=0.5), example_inputs=x)
    assert pruned.b.out_channels == 16
    assert pruned.b.out_channels % pruned.b.groups == 0
    assert pruned(x).shape == (1, 2)


# ---------------------------------------------------------------------------- unstructured
@pytest.mark.parametrize("amount", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("name", ZOO)
def test_unstructured_zero_fraction_is_exact(name: str, amount: float) -> None:
    model, x = zoo.get(name, batch_size=1)
    infos = ap.prunable_layers(model, x)
    pruned = ap.apply_schedule(
        model, ap.uniform_schedule(model, x, method="unstructured", amount=amount), example_inputs=x
    )
    _assert_plain(pruned)
    for info in infos:
        for layer, pname in info.weights:
            weight = pruned.get_submodule(layer).get_parameter(pname)
            assert weight.shape == model.get_submodule(layer).get_parameter(pname).shape
            assert abs(int((weight == 0).sum()) - round(amount * weight.numel())) <= 1, (layer, pname)
    with torch.no_grad():
        assert pruned(x).shape == (1, 10)


def test_unstructured_zeroes_the_smallest_weights_of_each_layer() -> None:
    model, x = zoo.get("cnn", batch_size=1)
    pruned = ap.apply_schedule(
        model, ap.Schedule(layers={"features.1.0": ap.LayerPlan("unstructured", 0.4)}), example_inputs=x
    )
    before = model.features[1][0].weight.abs().flatten()
    threshold = before.kthvalue(round(0.4 * before.numel())).values
    assert torch.equal(pruned.features[1][0].weight.flatten() == 0, before <= threshold)
    assert torch.equal(pruned.features[0][0].weight, model.features[0][0].weight)  # others untouched


def test_global_unstructured_zeroes_the_globally_smallest_weights() -> None:
    model, x = zoo.get("cnn", batch_size=1)
    infos = [i for i in ap.prunable_layers(model, x)]
    schedule = ap.uniform_schedule(model, x, method="unstructured", amount=0.6, global_unstructured=True)
    pruned = ap.apply_schedule(model, schedule, example_inputs=x)
    weights = [(layer, p) for i in infos for layer, p in i.weights]
    before = torch.cat([model.get_submodule(m).get_parameter(p).detach().abs().flatten() for m, p in weights])
    k = sum(round(0.6 * model.get_submodule(m).get_parameter(p).numel()) for m, p in weights)
    threshold = before.kthvalue(k).values
    zeros_per_layer = []
    for m, p in weights:
        orig = model.get_submodule(m).get_parameter(p).detach().abs()
        now = pruned.get_submodule(m).get_parameter(p)
        assert torch.equal(now == 0, orig <= threshold), m
        zeros_per_layer.append(float((now == 0).float().mean()))
    total = sum(int((pruned.get_submodule(m).get_parameter(p) == 0).sum()) for m, p in weights)
    assert total == k
    # The amounts move between layers (not all 60%).
    assert max(zeros_per_layer) - min(zeros_per_layer) > 0.1


def test_mixed_structured_and_unstructured_neighbours() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    schedule = ap.Schedule(
        layers={
            "features.0.0": ap.LayerPlan("structured", 0.5),
            "features.1.0": ap.LayerPlan("unstructured", 0.5),  # loses input channels too
            "features.3.0": ap.LayerPlan("structured", 0.25),
            "features.4.0": ap.LayerPlan("unstructured", 0.3),
        },
        steps=3,
        shape="linear",
        fine_tune_steps=2,
    )
    pruned = ap.apply_schedule(model, schedule, example_inputs=x, fine_tune=_sgd_fine_tune(x))
    _assert_plain(pruned)
    assert pruned.features[0][0].out_channels == 32
    assert pruned.features[3][0].out_channels == 96
    w1, w4 = pruned.features[1][0].weight, pruned.features[4][0].weight
    assert w1.shape == (64, 32, 3, 3) and w4.shape == (128, 96, 3, 3)
    assert abs(int((w1 == 0).sum()) - round(0.5 * w1.numel())) <= 1
    assert abs(int((w4 == 0).sum()) - round(0.3 * w4.numel())) <= 1


# ---------------------------------------------------------------------------- iterative
@pytest.mark.parametrize("shape", ["linear", "cubic", "oneshot"])
def test_iterative_structured_channels_follow_step_amounts(shape: str) -> None:
    model, x = zoo.get("cnn", batch_size=1)
    schedule = ap.uniform_schedule(model, x, amount=0.6, steps=3, shape=shape)
    seen: list[tuple[int, int, int, int]] = []

    def on_step(m: nn.Module, step: int, steps: int) -> None:
        assert steps == 3
        seen.append((step, m.features[0][0].out_channels, m.features[6][0].out_channels, m.classifier[1].out_features))

    ap.apply_schedule(model, schedule, example_inputs=x, on_step=on_step)
    amounts = step_amounts(0.6, 3, shape)
    assert seen == [(t + 1, _keep(64, a), _keep(256, a), _keep(128, a)) for t, a in enumerate(amounts)]


def test_iterative_unstructured_masks_survive_fine_tuning() -> None:
    model, x = zoo.get("cnn", batch_size=2)
    schedule = ap.uniform_schedule(
        model, x, method="unstructured", amount=0.8, steps=4, shape="cubic", fine_tune_steps=3
    )
    calls: list[int] = []
    fine_tune = _sgd_fine_tune(x)

    def counting_fine_tune(m: nn.Module, steps: int) -> None:
        calls.append(steps)
        fine_tune(m, steps)

    def on_step(m: nn.Module, step: int, steps: int) -> None:
        with torch.no_grad():
            m(x)  # the masks apply on forward
        for layer in ("features.1.0", "classifier.1"):
            module = m.get_submodule(layer)
            expected = round(step_amounts(0.8, 4, "cubic")[step - 1] * module.weight.numel())
            assert abs(int((module.weight == 0).sum()) - expected) <= 1
            assert hasattr(module, "weight_mask")  # still masked while fine-tuning
            assert torch.equal(module.weight == 0, module.weight_mask == 0)

    pruned = ap.apply_schedule(model, schedule, example_inputs=x, fine_tune=counting_fine_tune, on_step=on_step)
    assert calls == [3, 3, 3, 3]
    _assert_plain(pruned)
    weight = pruned.features[1][0].weight
    assert abs(int((weight == 0).sum()) - round(0.8 * weight.numel())) <= 1
    # Fine-tuning really trained the surviving weights.
    kept = weight != 0
    assert not torch.equal(weight[kept], model.features[1][0].weight[kept])


def test_no_fine_tune_calls_when_steps_are_zero() -> None:
    model, x = zoo.get("cnn", batch_size=1)
    calls: list[int] = []
    schedule = ap.uniform_schedule(model, x, amount=0.5, steps=2)
    with pytest.warns(UserWarning, match=r"got a fine_tune, but the schedule's fine_tune_steps is 0, so it is never called"):
        ap.apply_schedule(model, schedule, example_inputs=x, fine_tune=lambda m, s: calls.append(s))
    assert calls == []


def test_fine_tune_with_steps_gives_no_warning() -> None:
    model, x = zoo.get("cnn", batch_size=1)
    calls: list[int] = []
    schedule = ap.uniform_schedule(model, x, amount=0.5, steps=2, fine_tune_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ap.apply_schedule(model, schedule, example_inputs=x, fine_tune=lambda m, s: calls.append(s))
    assert calls == [3, 3]


def test_on_step_may_stop_the_schedule() -> None:
    model, x = zoo.get("cnn", batch_size=1)

    class Stop(Exception):
        pass

    def on_step(m: nn.Module, step: int, steps: int) -> None:
        raise Stop(step)

    with pytest.raises(Stop):
        ap.apply_schedule(model, ap.uniform_schedule(model, x, steps=3), example_inputs=x, on_step=on_step)


# ---------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", ["resnet", "transformer"])
def test_same_schedule_same_model_same_result(name: str) -> None:
    model, x = zoo.get(name, batch_size=2)
    layers = {
        i.name: ap.LayerPlan("structured" if "structured" in i.methods else "unstructured", 0.5)
        for i in ap.prunable_layers(model, x)
    }
    schedule = ap.Schedule(layers=layers, steps=2, shape="linear", fine_tune_steps=2, importance="random", seed=3)
    runs = [ap.apply_schedule(model, schedule, example_inputs=x, fine_tune=_sgd_fine_tune(x)) for _ in range(2)]
    assert _same_state(_state(runs[0]), _state(runs[1]))
    other = ap.apply_schedule(model, ap.Schedule(layers=layers, importance="random", seed=4), example_inputs=x)
    first = ap.apply_schedule(model, ap.Schedule(layers=layers, importance="random", seed=3), example_inputs=x)
    assert not _same_state(_state(first), _state(other))  # another seed, other channels


def test_callers_rng_is_left_alone() -> None:
    model, x = zoo.get("cnn", batch_size=1)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    ap.apply_schedule(model, ap.uniform_schedule(model, x, importance="random", seed=9), example_inputs=x)
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------------- schedule vs model
def test_two_plans_in_one_coupled_group_is_an_error() -> None:
    model, x = zoo.get("resnet", batch_size=1)
    schedule = ap.Schedule(
        layers={"stem.0": ap.LayerPlan("structured", 0.5), "layer1.0.conv2": ap.LayerPlan("structured", 0.3)}
    )
    with pytest.raises(ap.ScheduleError, match=r"'layer1.0.conv2'.*same coupled group 'stem.0'"):
        ap.apply_schedule(model, schedule, example_inputs=x)


def test_any_member_names_its_group() -> None:
    model, x = zoo.get("resnet", batch_size=1)
    pruned = ap.apply_schedule(
        model, ap.Schedule(layers={"layer1.1.bn2": ap.LayerPlan("structured", 0.5)}), example_inputs=x
    )
    assert pruned.stem[0].out_channels == 32
    assert pruned.layer1[0].conv2.out_channels == 32


def test_structured_on_the_output_layer_is_an_error() -> None:
    model, x = zoo.get("cnn", batch_size=1)
    schedule = ap.Schedule(layers={"classifier.3": ap.LayerPlan("structured", 0.5)})
    with pytest.raises(ap.ScheduleError, match=r"method 'structured' does not apply to layer 'classifier.3'.*output"):
        ap.apply_schedule(model, schedule, example_inputs=x)


def test_structured_amount_above_max_amount_is_an_error() -> None:
    model, x = zoo.get("mobilenetv2", batch_size=1)
    schedule = ap.Schedule(layers={"blocks.0.block.6": ap.LayerPlan("structured", 0.97)})
    with pytest.raises(ap.ScheduleError, match=r"amount <= 0.96.*'blocks.0.block.6'.*32 channels.*amount=0.97"):
        ap.apply_schedule(model, schedule, example_inputs=x)


def test_unknown_layer_is_an_error() -> None:
    model, x = zoo.get("cnn", batch_size=1)
    schedule = ap.Schedule(layers={"features.9": ap.LayerPlan("structured", 0.5)})
    with pytest.raises(ap.ScheduleError, match=r"'features.9' is not a prunable layer.*features.0.0"):
        ap.apply_schedule(model, schedule, example_inputs=x)


def test_layer_without_handler_is_an_error_with_its_reason() -> None:
    from tests.test_preflight import CustomNet

    model, x = CustomNet().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(ap.ScheduleError, match=r"'scale' cannot be pruned: _Scale with unwrapped"):
        ap.apply_schedule(model, ap.Schedule(layers={"scale": ap.LayerPlan("unstructured", 0.5)}), example_inputs=x)
    with pytest.raises(ap.ScheduleError, match=r"'conv2'.*custom autograd op"):
        ap.apply_schedule(model, ap.Schedule(layers={"conv2": ap.LayerPlan("structured", 0.5)}), example_inputs=x)


def test_custom_model_prunes_what_it_can() -> None:
    from tests.test_preflight import CustomNet

    model, x = CustomNet().eval(), torch.randn(1, 3, 8, 8)
    schedule = ap.uniform_schedule(model, x, amount=0.5)
    assert list(schedule.layers) == ["conv1"]
    pruned = ap.apply_schedule(model, schedule, example_inputs=x)
    assert pruned.conv1.out_channels == 8
    assert pruned.scale.gamma.shape == (1, 8, 1, 1)
    assert pruned.conv2.out_channels == 32
    assert pruned(x).shape == (1, 10)


def test_ignore_protects_a_whole_group() -> None:
    model, x = zoo.get("resnet", batch_size=1)
    schedule = ap.uniform_schedule(model, x, amount=0.5, ignore=["layer1.0.bn2"])
    pruned = ap.apply_schedule(model, schedule, example_inputs=x)
    assert pruned.stem[0].out_channels == 64  # group of layer1.0.bn2
    assert pruned.layer1[0].conv1.out_channels == 32


def test_ignore_must_name_layers_of_the_model() -> None:
    model, x = zoo.get("cnn", batch_size=1)
    with pytest.raises(ap.ScheduleError, match=r"`ignore` must name layers of the model.*'feature.0.0'"):
        ap.apply_schedule(model, ap.Schedule(ignore=["feature.0.0"]), example_inputs=x)


def test_resolve_plans_maps_plans_to_entries() -> None:
    model, x = zoo.get("resnet", batch_size=1)
    schedule = ap.Schedule(
        layers={
            "layer1.0.bn2": ap.LayerPlan("structured", 0.5),
            "fc": ap.LayerPlan("unstructured", 0.5),
            "layer1.0.conv1": ap.LayerPlan("none", 0.5),
        }
    )
    plans = resolve_plans(schedule, analyse(model, x))
    assert sorted(plans) == ["fc", "stem.0"]
    assert plans["stem.0"][1] == ap.LayerPlan("structured", 0.5)


def test_not_a_schedule_is_an_error() -> None:
    model, x = zoo.get("cnn", batch_size=1)
    with pytest.raises(ap.ScheduleError, match="must be an autoprune.Schedule"):
        ap.apply_schedule(model, {"layers": {}}, example_inputs=x)  # type: ignore[arg-type]


def test_empty_schedule_returns_an_equal_copy() -> None:
    model, x = zoo.get("cnn", batch_size=1)
    pruned = ap.apply_schedule(model, ap.Schedule(), example_inputs=x)
    assert pruned is not model
    assert _same_state(_state(model), _state(pruned))


def test_unstructured_ranking_does_not_depend_on_a_forward_pass_between_steps() -> None:
    """Regression: after fine-tuning, torch's masked `weight` attribute is stale until the next
    forward pass; the second step must rank the fine-tuned weights either way."""
    import autoprune as ap

    model, x = zoo.get("cnn", batch_size=2)
    schedule = ap.Schedule(layers={"features.1.0": ap.LayerPlan("unstructured", 0.6)}, steps=2, shape="linear",
                           fine_tune_steps=1)

    def fine_tune(m, steps):  # type: ignore[no-untyped-def]
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        torch.manual_seed(0)
        for _ in range(steps):
            opt.zero_grad()
            m(torch.randn(2, 3, 32, 32)).pow(2).mean().backward()
            opt.step()

    plain = ap.apply_schedule(model, schedule, example_inputs=x, fine_tune=fine_tune)
    with_forward = ap.apply_schedule(model, schedule, example_inputs=x, fine_tune=fine_tune,
                                     on_step=lambda m, step, n: m(x))
    torch.testing.assert_close(plain.state_dict(), with_forward.state_dict())


# ---------------------------------------------------------------------------- global allocation
def _structured_units(model: nn.Module, x: torch.Tensor) -> dict[str, list[str]]:
    from autoprune.space import SearchSpace

    space = SearchSpace(ap.prunable_layers(model, x), ap.SpaceConfig(methods=["structured", "none"]))
    return {u.key: [i.name for i in u.layers] for u in space.units if u.supports("structured")}


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_global_amounts_are_torch_prunings_global_pruning(name: str) -> None:
    from autoprune.executor import global_amounts

    model, x = zoo.get(name)
    before = _state(model)
    units = _structured_units(model, x)
    amounts = global_amounts(model, x, 0.5, units, max_amount=0.9)
    assert _same_state(before, _state(model))  # the model is left untouched
    # what a person writes by hand: MetaPruner, L2 magnitude, global ranking, the output ignored
    hand = zoo.get(name)[0]
    hand.load_state_dict(model.state_dict())
    output = [m for m in hand.modules() if isinstance(m, nn.Linear)][-1]
    tp.pruner.MetaPruner(hand, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                         global_pruning=True, max_pruning_ratio=0.9, ignored_layers=[output]).step()  # fmt: skip
    for key, names in units.items():
        kept = sum(_out(hand.get_submodule(n)) for n in names)
        total = sum(_out(model.get_submodule(n)) for n in names)
        assert amounts[key] == pytest.approx(1 - kept / total)
    assert set(amounts) == set(units) and all(0 <= a <= 0.9 for a in amounts.values())


def test_global_amounts_differ_per_unit_and_respect_the_cap() -> None:
    from autoprune.executor import global_amounts

    model, x = zoo.get("cnn")
    units = _structured_units(model, x)
    low = global_amounts(model, x, 0.25, units)
    assert max(low.values()) - min(low.values()) > 0.1  # ranked across units, not one ratio
    capped = global_amounts(model, x, 0.75, units, max_amount=0.5)
    assert max(capped.values()) <= 0.5 + 1e-9
    # only the named units are pruned
    first = next(iter(units))
    assert set(global_amounts(model, x, 0.5, {first: units[first]})) == {first}


def test_global_amounts_bad_input_is_an_error() -> None:
    from autoprune.executor import global_amounts

    model, x = zoo.get("cnn")
    with pytest.raises(ap.ScheduleError, match=r"`ratio` must be in \(0, 1\), but got 1.5"):
        global_amounts(model, x, 1.5, _structured_units(model, x))
    with pytest.raises(ap.ScheduleError, match="'nope'.*not roots of prunable groups"):
        global_amounts(model, x, 0.5, {"u": ["nope"]})
