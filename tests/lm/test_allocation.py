"""Language-model tasks (perplexity) and the allocation search, on small random models."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune.lm._allocation import (
    allocation_units,
    level_switch,
    on_budget,
    owl_allocation,
    project_to_budget,
    total_sparsity,
    unit_sizes,
)
from autoprune.lm._search import AllocationContext, search_allocation
from autoprune.oneshot import collect_input_stats, prunable_linears

transformers = pytest.importorskip("transformers")
VOCAB = 64


def tiny_llama(seed: int = 0, layers: int = 3) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def stream(n: int, seed: int) -> torch.Tensor:
    # a learnable-ish stream: repeated short motifs with noise
    g = torch.Generator().manual_seed(seed)
    motif = torch.randint(0, VOCAB, (7,), generator=g)
    ids = motif.repeat(n // 7 + 1)[:n].clone()
    noise = torch.rand(n, generator=g) < 0.2
    ids[noise] = torch.randint(0, VOCAB, (int(noise.sum()),), generator=g)
    return ids


@pytest.fixture(scope="module")
def lm_task() -> ap.Task:
    return ap.Task.for_causal_lm(
        tiny_llama(), train=stream(4000, 0), val=stream(640, 1), test=stream(640, 2), context_length=32,
        calibration_windows=8, batch_size=8,
    )  # fmt: skip


class Uniform(nn.Module):
    """Logits all equal: perplexity is exactly the vocabulary size."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, VOCAB)


def test_perplexity_of_uniform_logits_is_the_vocabulary_size():
    task = ap.Task.for_causal_lm(Uniform(), train=stream(200, 0), val=stream(100, 1), context_length=16)
    assert task.evaluate(task.model) == pytest.approx(VOCAB, rel=1e-6)  # float32 logits
    assert task.higher_is_better is False and task.metric_name == "perplexity"
    assert "6 non-overlapping windows of 16 tokens" in (task.metric_notice or "")  # 100 // 16


def test_lm_task_scores_windows_and_draws_calibration_from_train(lm_task):
    val = lm_task.evaluate(lm_task.model)
    assert 1.0 < val < 2 * VOCAB and math.isfinite(val)
    assert lm_task.evaluate(lm_task.model) == val  # deterministic
    assert lm_task.test is not None and lm_task.test(lm_task.model) != val
    calib = torch.cat(lm_task.calibration_inputs or [])
    assert calib.shape == (8, 32)
    train = stream(4000, 0)
    for window in calib:  # every calibration window is a slice of the training stream
        starts = [i for i in range(len(train) - 31) if torch.equal(train[i : i + 32], window)]
        assert starts
    assert lm_task.example_inputs["use_cache"] is False
    again = ap.Task.for_causal_lm(tiny_llama(), train=stream(4000, 0), val=stream(640, 1), context_length=32,
                                  calibration_windows=8, batch_size=8)  # fmt: skip
    assert torch.equal(torch.cat(again.calibration_inputs or []), calib)  # fixed seed


def test_text_with_a_tokenizer():
    from autoprune.lm import ByteTokenizer

    class ByteModel(Uniform):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*input_ids.shape, 256)

    text = "the quick brown fox jumps over the lazy dog. " * 20
    task = ap.Task.for_causal_lm(ByteModel(), train=text, val=[text, text], tokenizer=ByteTokenizer(), context_length=64)
    assert task.evaluate(task.model) == pytest.approx(256)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val": stream(10, 1)}, "`val` holds 10 tokens, shorter than one window of context_length=16"),
        ({"val": torch.tensor([1, 2, 200] * 10)}, "holds token id 200 but the model's vocabulary has 64 entries"),
        ({"val": "some text"}, "`val` is text: pass tokenizer="),
        ({"context_length": 1}, "`context_length` must be an int >= 2, but got context_length=1"),
    ],
)
def test_bad_lm_input_is_one_line(kwargs, message):
    options = {"train": stream(400, 0), "val": stream(100, 1), "context_length": 16, **kwargs}
    with pytest.raises(ap.TaskError, match=message.replace("(", r"\(")) as info:
        ap.Task.for_causal_lm(tiny_llama(layers=1), **options)
    assert "\n" not in str(info.value)


def test_model_without_logits():
    class Features(nn.Module):
        def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"hidden": torch.zeros(*input_ids.shape, 8)}

    with pytest.raises(ap.TaskError, match="returned dict with no logits"):
        ap.Task.for_causal_lm(Features(), train=stream(400, 0), val=stream(100, 1), context_length=16)


def test_budget_projection_and_level_switch():
    sizes = {"a": 100, "b": 300, "c": 600}
    projected = project_to_budget({"a": 0.7, "b": 0.2, "c": 0.5}, sizes, 0.5)
    assert on_budget(projected, sizes, 0.5)
    assert abs(total_sparsity(projected, sizes) - 0.5) < 1e-5
    # the shape is kept: one shift for all (0.07 here)
    assert projected == pytest.approx({"a": 0.77, "b": 0.27, "c": 0.57}, abs=1e-5)
    clipped = project_to_budget({"a": 0.9, "b": 0.2, "c": 0.5}, sizes, 0.6)
    assert clipped["a"] == 0.95 and abs(total_sparsity(clipped, sizes) - 0.6) < 1e-5
    equal = {"a": 100, "b": 100, "c": 100}
    import random

    moved = level_switch({"a": 0.5, "b": 0.5, "c": 0.5}, equal, 0.05, random.Random(0))
    assert moved is not None and sorted(moved.values()) == [0.45, 0.5, 0.55]
    assert total_sparsity(moved, equal) == pytest.approx(0.5)


def test_owl_gives_outlier_heavy_blocks_less_sparsity(lm_task):
    model = lm_task.model
    units = allocation_units(model, "block")
    assert list(units) == ["model.layers.0", "model.layers.1", "model.layers.2"]
    stats = collect_input_stats(model, prunable_linears(model), lm_task.calibration_inputs or [])
    owl = owl_allocation(model, stats, units, 0.7, lam=0.08)
    sizes = unit_sizes(model, units)
    assert on_budget(owl, sizes, 0.7)
    assert max(owl.values()) - min(owl.values()) == pytest.approx(0.16, abs=1e-4)  # 2 * lambda


@pytest.mark.slow  # a whole allocation search
def test_search_allocation_records_references_on_budget(lm_task, tmp_path):
    ctx = AllocationContext(lm_task, "wanda", "block")
    study = search_allocation(lm_task, sparsity=0.6, n_trials=8, seed=0, storage=f"sqlite:///{tmp_path}/lm.db",
                              study_name="lm", context=ctx, measure_latency=False)  # fmt: skip
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == 8 and len(done) == 8
    roles = [t.user_attrs["role"] for t in done]
    assert roles[:2] == ["uniform", "owl"] and roles.count("search") == 6
    for t in done:
        assert on_budget(t.user_attrs["amounts"], ctx.sizes, 0.6)
        assert t.values[0] == t.user_attrs["perplexity"]
        assert "test_perplexity" in t.user_attrs
    # the trial's stored Schedule, applied from JSON, gives the same model (shared masks == executor)
    best = min(done, key=lambda t: t.values[0])
    schedule = ap.Schedule.from_json(best.user_attrs["schedule"])
    pruned = ap.apply_schedule(lm_task.model, schedule, example_inputs=None, calibration=lm_task.calibration_inputs)
    assert lm_task.evaluate(pruned) == pytest.approx(best.user_attrs["perplexity"], rel=1e-9)
    zeros = sum(int((m.weight == 0).sum()) for m in prunable_linears(pruned).values())
    total = sum(m.weight.numel() for m in prunable_linears(pruned).values())
    assert abs(zeros / total - 0.6) <= 0.005
    # same seed, same schedules
    again = search_allocation(lm_task, sparsity=0.6, n_trials=8, seed=0, storage=f"sqlite:///{tmp_path}/lm2.db",
                              study_name="lm", context=ctx, measure_latency=False)  # fmt: skip
    assert [t.user_attrs["schedule"] for t in again.trials] == [t.user_attrs["schedule"] for t in study.trials]


@pytest.mark.slow  # a whole allocation search
def test_search_refuses_a_changed_setting(lm_task, tmp_path):
    url = f"sqlite:///{tmp_path}/lm.db"
    search_allocation(lm_task, sparsity=0.5, n_trials=2, storage=url, study_name="lm", measure_latency=False)
    with pytest.raises(ap.ConfigError, match=r"searched with levels=\[0.5\]; this run asks levels=\[0.7\]"):
        search_allocation(lm_task, sparsity=0.7, n_trials=2, storage=url, study_name="lm", measure_latency=False)
    with pytest.raises(ap.ConfigError, match="`sparsity` must be in"):
        search_allocation(lm_task, sparsity=1.2, n_trials=2, storage=url, study_name="lm2")


@pytest.mark.slow  # a whole allocation search
def test_ap_search_runs_the_allocation_search_for_a_perplexity_task(lm_task, tmp_path):
    study = ap.search(lm_task, n_trials=3, storage=f"sqlite:///{tmp_path}/s.db", study_name="s", sparsity=0.5,
                      measure_latency=False)  # fmt: skip
    assert [t.user_attrs["role"] for t in study.trials] == ["uniform", "owl", "search"]
    picked = ap.load_study("s", f"sqlite:///{tmp_path}/s.db").pick(minimize="perplexity")
    assert picked.metrics["perplexity"] == min(t.values[0] for t in study.trials)
    with pytest.raises(ap.ConfigError, match="scores perplexity"):
        ap.search(lm_task, objectives=["accuracy", "latency"], n_trials=1, storage=f"sqlite:///{tmp_path}/t.db")


@pytest.mark.slow  # a whole allocation search
def test_report_of_a_perplexity_study(lm_task, tmp_path):
    from autoprune.report import _lm, write_report

    study = search_allocation(lm_task, sparsity=[0.4, 0.6], n_trials=6, storage=f"sqlite:///{tmp_path}/r.db",
                              study_name="r", measure_latency=False)  # fmt: skip
    info = _lm._get_allocation_info(study)
    assert sorted(info.points) == ["owl", "search", "uniform"]
    assert sum(len(p) for p in info.points.values()) == 6
    for chosen in info.chosen:  # one per level, the lowest validation perplexity there
        level_vals = [t.values[0] for t in study.trials if t.user_attrs["level"] == chosen["level"]]
        assert chosen["val"] == min(level_vals)
    assert [c["level"] for c in info.chosen] == [0.4, 0.6]
    assert info.units == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert info.dense_val == pytest.approx(lm_task.evaluate(lm_task.model))
    files = write_report(study, tmp_path / "report")
    page = files.page.read_text()
    assert "Perplexity against sparsity" in page and "Allocations" in page and "Sensitivity per unit" not in page


@pytest.mark.slow  # a whole allocation search
def test_progress_reports_each_trial_once_when_it_ends(lm_task, tmp_path):
    seen: list[tuple[int, str]] = []
    search_allocation(lm_task, sparsity=[0.4, 0.6], n_trials=5, storage=f"sqlite:///{tmp_path}/p.db", study_name="p",
                      measure_latency=False, progress=lambda t: seen.append((t.number, t.state.name)))  # fmt: skip
    assert seen == [(n, "COMPLETE") for n in range(5)]  # references were enqueued ahead: never a WAITING one
