"""One-shot criteria (magnitude, Wanda, SparseGPT) at unstructured and N:M patterns."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune.oneshot import (
    collect_input_stats,
    decoder_blocks,
    keep_mask,
    prunable_linears,
    scores,
    sparse_bytes,
    sparsegpt_,
)

transformers = pytest.importorskip("transformers")


def tiny_llama(seed: int = 0) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def calibration(n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (2, 16), generator=g) for _ in range(n)]


def zero_fraction(t: torch.Tensor) -> float:
    return float((t == 0).float().mean())


def test_prunable_linears_skip_tied_head_and_find_blocks():
    model = tiny_llama()
    names = list(prunable_linears(model))
    assert "lm_head" not in names
    assert len(names) == 2 * 7  # q k v o gate up down per block
    assert decoder_blocks(model) == ["model.layers.0", "model.layers.1"]


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_amount_is_exact_per_layer(criterion):
    model = tiny_llama()
    layers = {n: ap.LayerPlan("unstructured", 0.5) for n in prunable_linears(model)}
    schedule = ap.Schedule(layers=layers, criterion=criterion)
    pruned = ap.apply_schedule(model, schedule, example_inputs=None, calibration=calibration())
    for name in layers:
        w = pruned.get_submodule(name).weight
        assert zero_fraction(w) == pytest.approx(0.5, abs=1e-9), name
        assert not hasattr(pruned.get_submodule(name), "weight_mask")
    # the input model is untouched and the tied head still shares the embedding
    assert zero_fraction(model.model.layers[0].self_attn.q_proj.weight) == 0.0
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_pattern_keeps_n_in_every_m(criterion, pattern):
    n, m = (int(v) for v in pattern.split(":"))
    model = tiny_llama()
    layers = {name: ap.LayerPlan("unstructured", 1 - n / m, pattern=pattern) for name in prunable_linears(model)}
    pruned = ap.apply_schedule(model, ap.Schedule(layers=layers, criterion=criterion), example_inputs=None,
                               calibration=calibration())  # fmt: skip
    for name in layers:
        w = pruned.get_submodule(name).weight
        groups = (w != 0).reshape(w.shape[0], -1, m).sum(dim=2)
        assert int(groups.max()) <= n and float(groups.float().mean()) == pytest.approx(n, abs=0.05), name


def test_wanda_uses_input_norms_per_row():
    # one input feature is 100x larger: Wanda keeps its column, magnitude does not care
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 0.1], [4.0, 0.2, 1.0, 0.3]]))
    x = torch.ones(8, 4)
    x[:, 3] = 100.0
    stats = collect_input_stats(layer, {"": layer}, [x])
    assert stats[""].tokens == 8
    torch.testing.assert_close(stats[""].norm, torch.tensor([8**0.5, 8**0.5, 8**0.5, 100 * 8**0.5], dtype=torch.float64))
    wanda = keep_mask(scores("wanda", layer.weight, stats[""]), 0.5)
    # per row, the large-input column survives: row 0 keeps 3.0 and 0.1 (x100), row 1 keeps 4.0 and 0.3 (x100)
    assert wanda.tolist() == [[False, False, True, True], [True, False, False, True]]
    assert not keep_mask(scores("magnitude", layer.weight, None), 0.5)[0, 3]  # magnitude alone drops it


def test_sparsegpt_reconstructs_better_than_magnitude():
    torch.manual_seed(0)
    w = torch.randn(64, 128, dtype=torch.float64)
    x = torch.randn(1024, 128, dtype=torch.float64) @ torch.randn(128, 128, dtype=torch.float64)  # correlated inputs
    h = 2 * x.t() @ x / x.shape[0]
    pruned = w.clone()
    keep = sparsegpt_(pruned, h, 0.5, blocksize=32)
    assert zero_fraction(pruned) == pytest.approx(0.5)
    assert bool(((pruned != 0) == keep).all())

    def err(m: torch.Tensor) -> float:
        return float(((x @ (w - m).t()) ** 2).mean())

    assert err(pruned) < 0.7 * err(w * keep)  # the OBS update repairs what its mask removed
    assert err(pruned) < 0.7 * err(w * keep_mask(w.abs(), 0.5, per_row=False))  # and beats magnitude


def test_schedule_json_round_trip_reproduces_weights():
    model = tiny_llama()
    layers = {n: ap.LayerPlan("unstructured", 0.6) for n in prunable_linears(model)}
    schedule = ap.Schedule(layers=layers, criterion="sparsegpt")
    again = ap.Schedule.from_json(schedule.to_json())
    assert again == schedule and '"criterion": "sparsegpt"' in schedule.to_json()
    a = ap.apply_schedule(model, schedule, example_inputs=None, calibration=calibration())
    b = ap.apply_schedule(model, again, example_inputs=None, calibration=calibration())
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na


def test_old_schedule_json_is_unchanged():
    s = ap.Schedule(layers={"a": ap.LayerPlan("unstructured", 0.5)})
    assert "criterion" not in s.to_json() and "pattern" not in s.to_json()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "unstructured", "amount": 0.5, "pattern": "4:2"}, "`pattern` must be 'N:M'"),
        ({"method": "unstructured", "amount": 0.3, "pattern": "2:4"}, "must be 1 - N/M = 0.5"),
        ({"method": "structured", "amount": 0.5, "pattern": "2:4"}, "needs method='unstructured'"),
    ],
)
def test_bad_pattern_names_the_value(kwargs, message):
    with pytest.raises(ap.ScheduleError, match=message.replace("(", r"\(")):
        ap.LayerPlan(**kwargs)


def test_bad_criterion_and_missing_calibration():
    with pytest.raises(ap.ScheduleError, match="criterion.*'obs'"):
        ap.Schedule(criterion="obs")
    model = tiny_llama()
    plan = ap.Schedule(layers={"model.layers.0.mlp.up_proj": ap.LayerPlan("unstructured", 0.5)}, criterion="wanda")
    with pytest.raises(ap.ScheduleError, match="needs calibration inputs"):
        ap.apply_schedule(model, plan, example_inputs=None)


def test_nm_on_layer_whose_input_is_not_a_multiple():
    model = nn.Sequential(nn.Linear(6, 4))
    plan = ap.Schedule(layers={"0": ap.LayerPlan("unstructured", 0.5, pattern="2:4")})
    with pytest.raises(ap.ScheduleError, match=r"pattern '2:4' on layer '0' needs its input size to be a multiple of 4, but it is 6"):
        ap.apply_schedule(model, plan, example_inputs=torch.randn(1, 6))


def test_sparse_bytes_counts_nm_metadata():
    # 2:4 of a 16x16 matrix: 128 kept fp32 values + 2 bits of index each
    assert sparse_bytes(256, 128, "2:4") == 128 * 4 + 128 * 2 // 8
    assert sparse_bytes(256, 0, None) == 1024
    assert sparse_bytes(256, 128, None) == 128 * 4 + 32


def test_save_and_load_pruned_without_calibration(tmp_path):
    model = tiny_llama()
    layers = {n: ap.LayerPlan("unstructured", 0.5, pattern="2:4") for n in prunable_linears(model)}
    schedule = ap.Schedule(layers=layers, criterion="wanda")
    pruned = ap.apply_schedule(model, schedule, example_inputs=None, calibration=calibration())
    x = {"input_ids": torch.randint(0, 64, (2, 16))}
    out = ap.save_pruned(pruned, tmp_path / "p", schedule=schedule, example_inputs=x)
    reloaded = ap.load_pruned(out, tiny_llama)  # rebuilt from the schedule: no calibration needed
    for name, value in pruned.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(**x).logits, pruned(**x).logits, rtol=0, atol=0)


def test_unstructured_mask_is_torchs_and_exact_where_weights_tie() -> None:
    from torch.nn.utils import prune

    from autoprune.oneshot import L1Unstructured

    g = torch.Generator().manual_seed(0)
    distinct = torch.randn(64, 48, generator=g)
    ones = torch.ones_like(distinct)
    for count in (0, 1, 1000, distinct.numel()):
        ours = L1Unstructured(amount=count).compute_mask(distinct, ones)
        torchs = prune.L1Unstructured(amount=count).compute_mask(distinct, ones)
        assert torch.equal(ours, torchs) and int((ours == 0).sum()) == count
    assert torch.equal(L1Unstructured(amount=0.3).compute_mask(distinct, ones), prune.L1Unstructured(amount=0.3).compute_mask(distinct, ones))
    # Ties at the threshold: exactly `count` zeroed, the smaller values all of them, the tied first in memory order.
    tied = torch.tensor([[3.0, -1.0, 2.0, 1.0], [0.5, 1.0, -1.0, 4.0]])
    mask = L1Unstructured(amount=3).compute_mask(tied, torch.ones_like(tied))
    assert mask.tolist() == [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="cannot prune 9 of 8 weights"):
        L1Unstructured(amount=9).compute_mask(tied, torch.ones_like(tied))
    # Iterative: a second call prunes among the weights still there (torch's PruningContainer).
    layer = nn.Linear(48, 64)
    L1Unstructured.apply(layer, "weight", amount=1000)
    L1Unstructured.apply(layer, "weight", amount=500)
    assert int((layer.weight == 0).sum()) == 1500
