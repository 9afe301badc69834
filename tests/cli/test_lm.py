"""``autoprune search`` / ``trials`` / ``apply`` on a language-model task: the installed CLI
in a subprocess (a small decoder from ``autoprune.testing.lm:tiny``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

import autoprune as ap
from autoprune.testing.cli import run_cli

transformers = pytest.importorskip("transformers")
# One xdist group (scripts/test.sh: --dist loadgroup): the module's search fixture runs once.
pytestmark = pytest.mark.xdist_group("cli-lm")
TASK = "autoprune.testing.lm:tiny"


def autoprune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("lmcli")
    storage = f"sqlite:///{folder}/lm.db"
    done = autoprune("search", "--task", TASK, "--trials", "7", "--sparsity", "0.4,0.6", "--storage", storage,
                     "--study", "lm", "--quiet", cwd=folder)  # fmt: skip
    return folder, storage, done


@pytest.mark.slow
def test_search_on_a_language_model(searched):
    folder, storage, done = searched
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "allocation search (wanda, per block) at sparsity 0.4, 0.6, 7 trials" in out
    assert "dense model: validation perplexity" in out and "non-overlapping windows of 64 tokens" in out
    study = optuna.load_study(study_name="lm", storage=storage)
    assert len(study.trials) == 7
    roles = [t.user_attrs["role"] for t in study.trials]
    assert roles[:4] == ["uniform", "owl", "uniform", "owl"]
    assert study.user_attrs["speedups"] or any("speedup" in t.user_attrs for t in study.trials)
    for line in out.splitlines():
        assert len(line.replace(storage, "S")) <= 100, line  # the storage path is the test's tmp folder
    best = min((t for t in study.trials if t.user_attrs["level"] == 0.6), key=lambda t: t.values[0])
    assert f"autoprune apply --study lm --storage {storage} --trial {best.number} --out pruned-{best.number}" in out
    page = next(line for line in out.splitlines() if line.startswith("report:")).split(maxsplit=1)[1]
    assert "Perplexity against sparsity" in Path(page).read_text()


@pytest.mark.slow
def test_apply_writes_a_model_that_reloads_with_from_pretrained(searched, tmp_path):
    folder, storage, _ = searched
    study = optuna.load_study(study_name="lm", storage=storage)
    trial = study.trials[3]
    done = autoprune("apply", "--study", "lm", "--storage", storage, "--trial", str(trial.number), "--out",
                     str(tmp_path / "out"), cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["applied"]["perplexity"] == pytest.approx(trial.user_attrs["perplexity"], rel=1e-9)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf")
    picked = ap.load_study("lm", storage).pick(trial=trial.number)
    model = picked.apply()
    for name, value in model.state_dict().items():  # the same weights, zeros included
        assert torch.equal(reloaded.state_dict()[name], value), name
    x = torch.randint(0, 256, (2, 16))
    with torch.inference_mode():  # same logits up to the attention kernel from_pretrained picks
        torch.testing.assert_close(reloaded(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=1e-5)
    linear = reloaded.model.layers[0].mlp.up_proj.weight
    assert float((linear == 0).float().mean()) == pytest.approx(trial.user_attrs["amounts"]["model.layers.0"], abs=0.01)


@pytest.mark.slow
def test_pick_by_metric_increase(searched):
    _, storage, _ = searched
    results = ap.load_study("lm", storage)
    study = results.study
    increases = sorted(t.user_attrs["perplexity_increase"] for t in study.trials)
    bound = increases[len(increases) // 2]
    picked = results.pick(max_metric_increase=bound, minimize="size")
    kept = [t for t in study.trials if t.user_attrs["perplexity_increase"] <= bound]
    assert picked.number == min(kept, key=lambda t: (t.user_attrs["sparse_bytes"], t.user_attrs["perplexity"])).number
    with pytest.raises(ap.ConfigError, match="scores perplexity"):
        results.pick(max_accuracy_drop=1.0)
    with pytest.raises(ap.NoQualifyingTrialError, match="no trial has validation perplexity increase <= -50.0%"):
        results.pick(max_metric_increase=-0.5)


@pytest.mark.slow  # builds the language-model task first (a user's factory: its metric is known once built)
def test_accuracy_options_on_a_language_model_exit_2(tmp_path, monkeypatch):
    done = run_cli("search", "--task", TASK, "--max-accuracy-drop", "1", "--storage", f"sqlite:///{tmp_path}/x.db",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "scores perplexity (lower is better): use --max-metric-increase" in done.stderr
    assert "Traceback" not in done.stderr
    # Built-in tasks are registered with their metric: refused before the task is built.
    def never(**options):
        raise AssertionError("the task was built")

    monkeypatch.setitem(ap.tasks._REGISTRY, "digits", never)
    monkeypatch.setitem(ap.tasks._REGISTRY, "tinylm", never)
    done = run_cli("search", "--sparsity", "0.5", "--storage", f"sqlite:///{tmp_path}/y.db", cwd=tmp_path)
    assert done.returncode == 2 and "--sparsity apply to language-model tasks (e.g. --task tinylm); task 'digits' " \
        "scores accuracy" in done.stderr, done.stderr  # fmt: skip
    done = run_cli("search", "--task", "tinylm", "--objectives", "accuracy,size", cwd=tmp_path)
    assert done.returncode == 2 and "task 'tinylm' scores perplexity (lower is better)" in done.stderr, done.stderr
    assert not (tmp_path / "y.db").exists() and not list(tmp_path.glob("studies/*"))


@pytest.mark.slow
def test_trials_lists_a_language_model_study(searched):
    folder, storage, _ = searched
    done = autoprune("trials", "--study", "lm", "--storage", storage, cwd=folder)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["trial", "kind", "state", "sparsity"]
    assert len(lines) == 1 + 7 and all(len(line) <= 100 for line in lines)
    study = optuna.load_study(study_name="lm", storage=storage)
    t = study.trials[1]
    assert lines[2].split()[:3] == ["1", "owl", "COMPLETE"] and f"{t.user_attrs['perplexity']:7.3f}".strip() in lines[2]
    done = autoprune("trials", "--study", "lm", "--storage", storage, "--recommend", cwd=folder)
    assert done.returncode == 0 and "dense model: validation perplexity" in done.stdout


def test_layers_of_a_language_model_lists_blocks_without_tracing(capsys):
    from autoprune.cli import main

    assert main(["layers", "--task", TASK]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out and "14 prunable linear layers in 2 blocks" in out
    block = next(line for line in out.splitlines() if line.startswith("model.layers.1 "))
    # q 32x32, k 16x32, v 16x32, o 32x32, gate/up 64x32, down 32x64: 9,216 weights
    assert block.split()[1] == "9,216" and "q 32x32, k 16x32" in block and "down 32x64" in block
    assert "search space: one sparsity per block (2 dimensions; --granularity layer: 14)" in out
    structural = [line for line in out.splitlines() if line.startswith("model.layers.") and "heads in" in line]
    assert structural == [
        f"model.layers.{i}           4 heads in 2 groups of 8 dims (amounts 0, 0.5, 0.75); 64 MLP channels"
        for i in range(2)
    ]
