"""Structural pruning of decoder language models (autoprune.decoder), the executor's route for
it, and saving for from_pretrained: a zoo of transformers configs with random weights."""

from __future__ import annotations

import copy
import time

import pytest
import torch
import transformers as tf

import autoprune as ap
from autoprune.decoder import (
    StructureError,
    allowed_head_amounts,
    decoder_layout,
    prune_decoder_,
    removal_order,
    structure_scores,
)

VOCAB = 97


def _config(family: str, layers: int = 4) -> tf.PretrainedConfig:
    common = dict(vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)  # fmt: skip
    if family == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=layers, n_head=8, n_positions=64, n_inner=96, **common)
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[family]
    return cls(hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=8,
               num_key_value_heads=2, tie_word_embeddings=family == "llama", **common)  # fmt: skip


def _model(family: str, layers: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(_config(family, layers)).eval()


def _ids(batch: int = 2, length: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _greedy_without_cache(model: torch.nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    return ids


FAMILIES = ["llama", "qwen2", "mistral", "gpt2"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("remove", [(), (1,)], ids=["width", "width+depth"])
def test_zoo_prune_run_generate_roundtrip(family: str, remove: tuple[int, ...], tmp_path: object) -> None:
    model = _model(family)
    ids = _ids()
    scores = structure_scores(model, [ids])
    dense = sum(p.numel() for p in model.parameters())
    prune_decoder_(model, heads=dict.fromkeys(range(4), 0.3), channels=dict.fromkeys(range(4), 0.3), remove=remove,
                   scores=scores)  # fmt: skip
    layout = decoder_layout(model)
    shapes = layout.shapes(model)
    assert len(shapes) == 4 - len(remove) == model.config.num_hidden_layers
    # 30% of 8 heads: 6 kept (3 of 4 query heads in each of 2 key/value groups, or 6 separate heads)
    assert [s.heads for s in shapes] == [6] * len(shapes)
    assert [s.intermediate for s in shapes] == [96 - round(0.3 * 96)] * len(shapes)
    assert all(s.head_dim == 8 for s in shapes)
    assert sum(p.numel() for p in model.parameters()) < dense
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (2, 16, VOCAB)
    # generation with the KV cache agrees with recomputing every prefix (layer indices line up)
    prompt = ids[:1, :6]
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert torch.equal(generated, _greedy_without_cache(model, prompt, 6))
    path = tmp_path / family  # type: ignore[operator]
    ap.lm.save_pretrained(model, path)
    for reloaded in (ap.lm.from_pretrained(path),
                     tf.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)):  # fmt: skip
        reloaded.eval()
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids=ids).logits, logits)
        if model.config.tie_word_embeddings:
            assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight


def test_uniform_blocks_reload_with_the_model_class_itself(tmp_path: object) -> None:
    """Blocks that all keep the same widths need no autoprune class: the config's own fields
    describe them and no code file is written."""
    model = _model("mistral")
    prune_decoder_(model, channels=dict.fromkeys(range(4), 0.5), remove=[3])
    ap.lm.save_pretrained(model, tmp_path)
    assert not (tmp_path / "modeling_autoprune.py").exists()  # type: ignore[operator]
    reloaded = tf.MistralForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.intermediate_size == 48 and reloaded.config.num_hidden_layers == 3
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_heads_of_least_importance_go_first() -> None:
    model = _model("llama")
    attn = model.model.layers[0].self_attn
    with torch.no_grad():  # query heads 1 and 5 contribute nothing to the output
        for h in (1, 5):
            attn.o_proj.weight[:, h * 8 : (h + 1) * 8] = 0
    scores = structure_scores(model, [_ids()])
    assert set(scores.heads[0].argsort()[:2].tolist()) == {1, 5}
    q_before = attn.q_proj.weight.detach().clone()
    prune_decoder_(model, heads={0: 0.25}, scores=scores)
    new = model.model.layers[0].self_attn
    kept = [0, 2, 3, 4, 6, 7]
    assert torch.equal(new.q_proj.weight, q_before.reshape(8, 8, 64)[kept].reshape(48, 64))
    assert new.num_key_value_groups == 3 and new.k_proj.out_features == 16


def test_whole_key_value_groups_go_when_that_keeps_more() -> None:
    model = _model("qwen2")
    attn = model.model.layers[0].self_attn
    with torch.no_grad():  # the second key/value group's four query heads matter little
        attn.o_proj.weight[:, 32:] *= 1e-3
    prune_decoder_(model, heads={0: 0.5}, scores=structure_scores(model, [_ids()]))
    new = model.model.layers[0].self_attn
    assert new.k_proj.out_features == 8 and new.q_proj.out_features == 32 and new.num_key_value_groups == 4


def test_block_influence_orders_an_identity_block_first() -> None:
    model = _model("llama")
    block = model.model.layers[2]
    with torch.no_grad():  # the block adds nothing to the residual stream: h_out == h_in
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    scores = structure_scores(model, [_ids()])
    assert scores.influence is not None and scores.influence[2] == pytest.approx(0.0, abs=1e-9)
    assert removal_order(scores)[0] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": {0: 0.4}}, "heads amount 0.4 on model.layers.0 keeps 5 of 8 query heads"),
        ({"heads": {0: 0.95}}, "keeps no query head"),
        ({"heads": {0: 1.0}}, "`0 <= amount < 1` must hold for the heads of model.layers.0"),
        ({"remove": [0, 1, 2, 3]}, "removing 4 of 4 blocks leaves none"),
        ({"remove": [4]}, "block index 4 is not a block of this model (0..3)"),
        ({"channels": {9: 0.5}}, "block index 9 is not a block of this model"),
    ],
)
def test_bad_plans_are_one_line_errors_and_leave_the_model_whole(kwargs: dict, message: str) -> None:
    model = _model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(StructureError) as info:
        prune_decoder_(model, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}


def test_head_amount_error_lists_what_is_allowed() -> None:
    shape = decoder_layout(_model("llama")).shapes(_model("llama"))[0]
    assert allowed_head_amounts(shape) == [0.0, 0.25, 0.5, 0.625, 0.75, 0.875]
    with pytest.raises(StructureError, match="allowed amounts: 0, 0.25, 0.5, 0.625, 0.75, 0.875"):
        prune_decoder_(_model("llama"), heads={1: 0.4})


def test_models_it_does_not_know_are_sent_to_unstructured_pruning() -> None:
    from autoprune.testing import models as zoo

    cnn, _ = zoo.get("cnn")
    with pytest.raises(StructureError, match="prune it unstructured"):
        decoder_layout(cnn)
    gpt2 = _model("gpt2")
    gpt2.config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(StructureError, match="scale_attn_by_inverse_layer_idx"):
        prune_decoder_(gpt2, remove=[1])


def test_schedule_with_heads_mlp_blocks_and_two_four_on_a_decoder() -> None:
    model = _model("llama")
    ids = _ids()
    schedule = ap.Schedule(
        layers={
            "model.layers.0.self_attn": ap.LayerPlan("structured", 0.5),
            "model.layers.1.mlp": ap.LayerPlan("structured", 0.25),
            "model.layers.3.mlp.up_proj": ap.LayerPlan("unstructured", 0.5, pattern="2:4"),
        },
        remove_blocks=("model.layers.2",),
        criterion="wanda",
    )
    assert ap.Schedule.from_json(schedule.to_json()) == schedule
    pruned = ap.apply_schedule(model, schedule, example_inputs={"input_ids": ids}, calibration=[ids])
    shapes = decoder_layout(pruned).shapes(pruned)
    assert [(s.heads, s.intermediate) for s in shapes] == [(4, 96), (8, 72), (8, 96)]
    up = pruned.model.layers[2].mlp.up_proj.weight  # the old block 3, renumbered
    assert (up == 0).float().mean().item() == 0.5
    assert ((up.reshape(-1, 4) != 0).sum(dim=1) == 2).all()
    assert decoder_layout(model).shapes(model)[0].heads == 8  # the input model is untouched
    again = ap.apply_schedule(model, schedule, example_inputs={"input_ids": ids}, calibration=[ids])
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}


def test_iterative_schedule_reaches_the_same_widths_in_steps() -> None:
    model = _model("gpt2")
    ids = _ids()
    seen = []
    schedule = ap.Schedule(layers={"transformer.h.0.attn": ap.LayerPlan("structured", 0.75),
                                   "transformer.h.1.mlp": ap.LayerPlan("structured", 0.5)},
                           steps=3, shape="linear", fine_tune_steps=1)  # fmt: skip
    pruned = ap.apply_schedule(model, schedule, example_inputs={"input_ids": ids}, calibration=[ids],
                               fine_tune=lambda m, n: None,
                               on_step=lambda m, i, n: seen.append([(s.heads, s.intermediate)
                                                                    for s in decoder_layout(m).shapes(m)][:2]))  # fmt: skip
    assert seen == [[(6, 96), (8, 80)], [(4, 96), (8, 64)], [(2, 96), (8, 48)]]
    assert decoder_layout(pruned).shapes(pruned)[0].heads == 2


def test_schedule_errors_on_a_decoder() -> None:
    model = _model("llama")
    x = {"input_ids": _ids()}
    with pytest.raises(StructureError, match="remove_blocks names 'model.layers.9'"):
        ap.apply_schedule(model, ap.Schedule(remove_blocks=("model.layers.9",)), example_inputs=x)
    with pytest.raises(ap.ScheduleError, match="its plan must be structured"):
        ap.apply_schedule(model, ap.Schedule(layers={"model.layers.0.mlp": ap.LayerPlan("unstructured", 0.5)},
                                             remove_blocks=("model.layers.1",)), example_inputs=x)  # fmt: skip
    with pytest.raises(ap.ScheduleError, match="`remove_blocks` must be a list of block paths"):
        ap.Schedule(remove_blocks="model.layers.1")  # type: ignore[arg-type]


@pytest.mark.parametrize("family", FAMILIES)
def test_prunable_layers_of_a_decoder_take_no_tracing(family: str) -> None:
    model = _model(family)
    started = time.perf_counter()
    layers = ap.prunable_layers(model, {"input_ids": _ids()})
    assert time.perf_counter() - started < 30  # tracing took minutes; this reads the layout
    by_name = {layer.name: layer for layer in layers}
    attention = "model.layers.0.self_attn" if family != "gpt2" else "transformer.h.0.attn"
    mlp = attention.rsplit(".", 1)[0] + ".mlp"
    assert by_name[attention].methods == ("structured",) and by_name[attention].heads == 8
    assert by_name[attention].max_amount == 0.875
    assert by_name[mlp].channels == 96 and by_name[mlp].max_amount == pytest.approx(95 / 96)
    linears = 7 if family != "gpt2" else 4
    assert len(layers) == 4 * (2 + linears)
    # what the preflight offers, the executor takes
    plan = ap.Schedule(layers={attention: ap.LayerPlan("structured", by_name[attention].max_amount)})
    pruned = ap.apply_schedule(copy.deepcopy(model), plan, example_inputs={"input_ids": _ids()})
    assert decoder_layout(pruned).shapes(pruned)[0].heads == 1


def test_mlp_channels_are_ranked_by_activation_times_weight() -> None:
    """Channels whose activation is always zero go first, however large their weights
    (weight magnitude alone would keep them)."""
    model = _model("llama")
    mlp = model.model.layers[0].mlp
    dead = list(range(10))
    with torch.no_grad():
        mlp.gate_proj.weight[dead] = 0  # silu(0) * up = 0: these channels never fire
        mlp.down_proj.weight[:, dead] *= 100
    scores = structure_scores(model, [_ids()])
    assert set(scores.channels[0].argsort()[:10].tolist()) == set(dead)
    prune_decoder_(model, channels={0: 10 / 96}, scores=scores)
    assert model.model.layers[0].mlp.up_proj.out_features == 86
    without_calibration = structure_scores(_model("llama"))
    assert without_calibration.influence is None


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_regime_generates_what_generate_does(family: str) -> None:
    """The decode latency regime times real cached generation on every family."""
    from autoprune.lm._latency import Decode

    model = _model(family)
    prune_decoder_(model, heads={0: 0.5}, remove=[2])
    prompt = _ids()[:1, :6]
    with torch.no_grad():
        ours = Decode(model, 5)(prompt)
    assert torch.equal(ours, model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)[:, 6:])
