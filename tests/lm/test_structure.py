"""The structural search of a language model (heads, MLP channels, blocks) and its latency
regimes, on the small decoder of ``autoprune.testing.lm:tiny``; and the CLI around it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

import autoprune as ap
from autoprune.decoder import decoder_layout, removal_order, structure_scores
from autoprune.lm._latency import Decode
from autoprune.testing.cli import run_cli
from autoprune.testing.lm import tiny

transformers = pytest.importorskip("transformers")
# One xdist group (scripts/test.sh: --dist loadgroup): the module's search fixture runs once.
pytestmark = pytest.mark.xdist_group("lm-structure")
TASK = "autoprune.testing.lm:tiny"


@pytest.fixture(scope="module")
def task() -> ap.Task:
    return tiny()


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('structure')}/s.db"


@pytest.fixture(scope="module")
def study(task: ap.Task, storage: str) -> optuna.Study:
    return ap.lm.search_structure(task, n_trials=7, fine_tune_steps=2, budget_s=0.2, sparsity=[0.5], storage=storage,
                                  study_name="s", max_metric_increase=0.5)  # fmt: skip


def test_decode_is_greedy_generation_with_the_cache(task: ap.Task) -> None:
    prompt = task.example_inputs["input_ids"][:1, :8]
    with torch.no_grad():
        ours = Decode(task.model, 5)(prompt)
    expected = task.model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=True)
    assert torch.equal(ours, expected[:, 8:])


def test_speedups_in_both_regimes(task: ap.Task) -> None:
    pruned = ap.apply_schedule(task.model, ap.Schedule(remove_blocks=("model.layers.1",)),
                               example_inputs=task.example_inputs)  # fmt: skip
    speedups = ap.lm.lm_speedups(pruned, task, budget_s=0.2, new_tokens=4)
    assert sorted(speedups) == ["decode", "prefill"]
    for s in speedups.values():
        assert s.low <= s.ratio <= s.high and s.rounds >= 3 and s.model_ms > 0 and s.reference_ms > 0
    with pytest.raises(ValueError, match="latency regimes must be among prefill, decode, but got"):
        ap.lm.lm_speedups(pruned, task, regimes=("batch",))


def test_distillation_keeps_a_pruned_model_closer_to_the_dense_one(task: ap.Task) -> None:
    """The same steps from the same pruned model: with the KL term the model ends nearer the
    dense model's predictions than plain fine-tuning takes it."""
    pruned = ap.apply_schedule(task.model, ap.Schedule(layers={"model.layers.0.mlp": ap.LayerPlan("structured", 0.75)}),
                               example_inputs=task.example_inputs, calibration=task.calibration_inputs)  # fmt: skip
    x = task.calibration_inputs[0]

    def kl(m: torch.nn.Module) -> float:
        with torch.no_grad():
            p = torch.log_softmax(task.model(input_ids=x).logits, -1)
            q = torch.log_softmax(m(input_ids=x).logits, -1)
        return float(torch.nn.functional.kl_div(q, p, log_target=True, reduction="batchmean"))

    plain, distilled = copy.deepcopy(pruned), copy.deepcopy(pruned)
    assert task.distill_fine_tune is not None
    task.fine_tune(plain, 20)
    task.distill_fine_tune(distilled, 20)
    assert kl(distilled) < kl(plain)


@pytest.mark.slow  # the module's structural search
def test_search_records_every_trial_with_both_speedups(study: optuna.Study, task: ap.Task) -> None:
    assert len(study.trials) == 7
    roles = [t.user_attrs.get("role") for t in study.trials]
    # tiny has 2 blocks: ShortGPT removes one (the least influential), max_removed = 1
    assert roles[:4] == ["uniform-heads-mlp", "uniform-mlp", "shortgpt-1", "uniform-wanda"]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(done) + len(failed) == 7 and all("max_removed=1" in t.user_attrs["error"] for t in failed)
    for t in done:
        a = t.user_attrs
        for regime in ("prefill", "decode"):
            assert a[f"{regime}_speedup_low"] <= a[f"{regime}_speedup"] <= a[f"{regime}_speedup_high"]
        assert t.values == [a["perplexity"], a["prefill_speedup"]] + ([a["sparse_bytes"]] if len(t.values) == 3 else [])
        assert a["fine_tune_steps_spent"] == 2
    by_role = {t.user_attrs["role"]: t for t in done}
    order = removal_order(structure_scores(task.model, task.calibration_inputs))
    assert by_role["shortgpt-1"].user_attrs["blocks_removed"] == [order[0]]
    wanda = by_role["uniform-wanda"]
    assert wanda.user_attrs["kind"] == "unstructured" and wanda.user_attrs["params_removed"] == 0.0
    assert study.directions[1] == optuna.study.StudyDirection.MAXIMIZE


@pytest.mark.slow  # the module's structural search
def test_reapplying_a_trial_reproduces_its_architecture_and_perplexity(study: optuna.Study, task: ap.Task) -> None:
    trial = next(t for t in study.trials if t.user_attrs.get("role") == "uniform-heads-mlp")
    schedule = ap.Schedule.from_json(trial.user_attrs["schedule"])
    assert schedule.distill and schedule.fine_tune_steps == 2
    model = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs,
                              calibration=task.calibration_inputs, fine_tune=task.distill_fine_tune)  # fmt: skip
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert params == trial.user_attrs["params"]
    assert [s.heads for s in decoder_layout(model).shapes(model)] == [2, 2]
    assert task.evaluate(model) == pytest.approx(trial.user_attrs["perplexity"], rel=1e-5)
    wanda = next(t for t in study.trials if t.user_attrs.get("role") == "uniform-wanda")
    sparse = ap.apply_schedule(task.model, ap.Schedule.from_json(wanda.user_attrs["schedule"]),
                               example_inputs=task.example_inputs, calibration=task.calibration_inputs)  # fmt: skip
    assert (sparse.model.layers[0].mlp.up_proj.weight == 0).float().mean().item() == pytest.approx(0.5)


@pytest.mark.slow  # the module's structural search
def test_pick_fastest_and_summary(study: optuna.Study, storage: str) -> None:
    results = ap.load_study("s", storage)
    picked = results.pick(minimize="latency")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["feasible"]]
    assert picked.number == max(done, key=lambda t: t.user_attrs["prefill_speedup"]).number
    assert picked.metrics["prefill_speedup"] == max(t.user_attrs["prefill_speedup"] for t in done)
    from autoprune.lm._summary import lm_summary_lines, lm_trial_lines

    lines = lm_summary_lines(study, "sqlite:///s.db")
    assert "Pareto front (validation perplexity, prefill speedup):" in lines
    assert f"pick: trial {picked.number}, fastest (prefill) with validation perplexity at most +50%:" in lines
    assert all(len(line) <= 100 for line in lines)
    rows = lm_trial_lines(study.trials)
    assert len(rows) == 8 and all(len(r) <= 100 for r in rows)


def test_search_refuses_bad_settings(task: ap.Task) -> None:
    with pytest.raises(ap.ConfigError, match="`latency` must be one of prefill, decode, but got latency='batch'"):
        ap.lm.search_structure(task, latency="batch")
    with pytest.raises(ap.ConfigError, match="nothing to search"):
        ap.lm.search_structure(task, heads=False, mlp=False, depth=False)
    with pytest.raises(ap.ConfigError, match=r"`max_removed` must be an int in 0..1, but got max_removed=2"):
        ap.lm.search_structure(task, max_removed=2)
    scored_higher = copy.copy(task)
    object.__setattr__(scored_higher, "higher_is_better", True)
    with pytest.raises(ap.ConfigError, match="needs a perplexity task"):
        ap.lm.search_structure(scored_higher)


def test_search_on_a_model_without_a_known_layout_says_to_prune_unstructured(task: ap.Task) -> None:
    odd = copy.copy(task)
    model = copy.deepcopy(task.model)
    model.model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])  # type: ignore[assignment]
    object.__setattr__(odd, "model", model)
    with pytest.raises(ap.ScheduleError, match="prune it unstructured"):
        ap.lm.search_structure(odd)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.mark.slow
def test_cli_structure_search_apply_reload(tmp_path: Path, task: ap.Task) -> None:
    storage = f"sqlite:///{tmp_path}/cli.db"
    (tmp_path / "short.toml").write_text("latency_budget_s = 0.2\n")  # each regime timed for 0.2 s, not 2 s
    done = _cli("search", "short.toml", "--task", TASK, "--structure", "--latency", "decode", "--trials", "5",
                "--fine-tune-steps", "1", "--storage", storage, "--study", "st", "--no-report", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "objective decode speedup" in done.stdout and "Pareto front (validation perplexity, decode speedup):" in done.stdout
    study = optuna.load_study(study_name="st", storage=storage)
    assert len(study.trials) == 5 and study.user_attrs["config"]["latency"] == "decode"
    assert study.user_attrs["config"]["budget_s"] == 0.2
    number = next(t.number for t in study.trials if t.user_attrs.get("role") == "uniform-heads-mlp")
    applied = _cli("apply", "--study", "st", "--storage", storage, "--trial", str(number), "--out", "p", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert json.loads((tmp_path / "p" / "schedule.json").read_text())["distill"] is True
    reloaded = ap.lm.from_pretrained(tmp_path / "p" / "hf").eval()
    loaded = ap.load_pruned(tmp_path / "p", lambda: copy.deepcopy(task.model), example_inputs=task.example_inputs)
    x = task.example_inputs["input_ids"]
    with torch.no_grad():
        # the same weights; from_pretrained may pick another attention kernel (sdpa) than the task's eager
        torch.testing.assert_close(reloaded(input_ids=x).logits, loaded(input_ids=x).logits, atol=1e-5, rtol=1e-5)
    assert task.evaluate(loaded) == pytest.approx(study.trials[number].user_attrs["perplexity"], rel=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--latency", "decode"], "--latency apply to the structural search: add --structure"),
        (["--structure", "--fine-tune-steps", "-1"], "--fine-tune-steps must be >= 0, but got -1"),
        (["--structure", "--criterion", "sparsegpt"], "--criterion and --granularity apply to the allocation search"),
    ],
)
def test_cli_refuses_structure_options_where_they_do_not_apply(tmp_path: Path, args: list[str], message: str) -> None:
    done = run_cli("search", "--task", TASK, *args, "--trials", "2", "--storage", f"sqlite:///{tmp_path}/x.db",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists() or not optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/x.db")


@pytest.mark.slow  # the installed command in a subprocess
def test_cli_refuses_structure_on_an_accuracy_task(tmp_path: Path) -> None:
    done = _cli("search", "--task", "digits", "--structure", "--trials", "2", cwd=tmp_path)
    assert done.returncode == 2 and "--structure apply to language-model tasks" in done.stderr


@pytest.mark.slow  # the module's structural search
def test_report_plots_every_trial_against_both_speedups(study: optuna.Study, tmp_path: Path) -> None:
    from autoprune.report import report
    from autoprune.report._lm import structure_figures

    done = {t.number: t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    sections = {key: figure for key, _, _, figure, _ in structure_figures(study)}
    assert list(sections) == ["speed-prefill", "speed-decode", "blocks"]
    for regime in ("prefill", "decode"):
        traces = sections[f"speed-{regime}"].data
        xs = sorted(x for trace in traces for x in trace.x)
        assert xs == sorted(t.user_attrs[f"{regime}_speedup"] for t in done.values())
        kinds = {trace.name for trace in traces}
        assert kinds == {t.user_attrs["kind"] for t in done.values()}
    page = report(study, tmp_path / "report")
    text = Path(page).read_text()
    assert "Perplexity against prefill speedup" in text and "Where each trial cuts" in text


def test_structure_with_two_four_keeps_mlp_widths_a_multiple_of_four(task: ap.Task) -> None:
    schedule = ap.lm.structure_schedule(task, mlp={0: 0.3, 1: 0.1}, remove=[1], sparsity="2:4")
    assert schedule.round_to == 4 and schedule.criterion == "wanda"
    assert all(p.pattern == "2:4" for p in schedule.layers.values() if p.method == "unstructured")
    assert not any(name.startswith("model.layers.1.") for name in schedule.layers)  # the removed block
    model = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs,
                              calibration=task.calibration_inputs)  # fmt: skip
    (shape,) = decoder_layout(model).shapes(model)
    assert shape.intermediate == 44  # 64 - round(0.3 * 64) = 45, down to a multiple of 4
    down = model.model.layers[0].mlp.down_proj.weight
    assert ((down.reshape(-1, 4) != 0).sum(dim=1) <= 2).all() and (down == 0).float().mean().item() >= 0.5
    with pytest.raises(ap.ConfigError, match="`sparsity` holds '2x4'"):
        ap.lm.search_structure(task, sparsity=["2x4"])


@pytest.mark.slow  # the module's structural search
def test_local_moves_change_one_choice_of_the_fastest_trial_within_the_limit(study: optuna.Study, storage: str) -> None:
    import random

    from autoprune.lm._structured import _enqueue_neighbour

    copy_ = optuna.create_study(directions=study.directions)
    for t in study.trials:
        copy_.add_trial(t)
    done = [t for t in copy_.trials if t.state == optuna.trial.TrialState.COMPLETE
            and t.user_attrs["perplexity_increase"] <= 0.5]  # fmt: skip
    base = max(done, key=lambda t: (t.user_attrs["speedup"], -t.number))
    head_choices = [[0.0, 0.5, 0.75]] * 2
    for seed in range(6):
        _enqueue_neighbour(copy_, random.Random(seed), head_choices, max_removed=1, limit=0.5)
    waiting = [t for t in copy_.trials if t.state == optuna.trial.TrialState.WAITING]
    assert waiting
    for t in waiting:
        assert t.user_attrs == {"role": "local", "neighbour_of": base.number}
        params = t.system_attrs["fixed_params"]  # what the next ask() will evaluate
        changed = [k for k in base.params if params[k] != base.params[k]]
        assert len(changed) == 1
        assert sum(bool(v) for k, v in params.items() if k.startswith("remove_")) <= 1
