"""``autoprune apply``: the installed CLI in a subprocess, exit codes and output files."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import autoprune as ap
from autoprune.evaluation import count_macs, size_stats


@pytest.fixture(scope="module")
def study(real_study: tuple[str, str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    storage, name, trials = real_study  # tests/conftest.py: the study "real", built once per session
    assert name == "real"
    return storage, trials


def autoprune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The trained digits model is cached in $AUTOPRUNE_CACHE_DIR (set by conftest), which the
    # subprocess inherits, so it does not train again.
    return subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "apply", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # the installed command in a subprocess
def test_apply_by_trial_writes_a_reloadable_model(
    study: tuple[str, dict[str, Any]], digits_task: ap.Task, tmp_path: Path
) -> None:
    storage, trials = study
    number, in_memory, recorded = trials["mixed"]
    out = tmp_path / "out"
    proc = autoprune("--study", "real", "--storage", storage, "--trial", str(number), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"picked trial {number}" in proc.stdout
    assert ap.Schedule.from_json((out / "schedule.json").read_text()).summary() in proc.stdout
    for name in ("weights.pt", "schedule.json", "metrics.json", "architecture.json"):
        assert (out / name).is_file() and name in proc.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trial"] == number and metrics["study"] == "real"
    assert metrics["recorded"]["params"] == recorded["params"]
    assert metrics["applied"]["params"] == recorded["params"]
    # same software and seeds in the subprocess: the same weights (checked below), so the same accuracy
    assert metrics["applied"]["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-9)
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["params"] == recorded["params"] and arch["macs"] == recorded["macs"]

    model = ap.load_pruned(out, digits_task.fresh_model)
    assert size_stats(model)["params"] == recorded["params"]
    assert count_macs(model, digits_task.example_inputs) == recorded["macs"]
    with torch.inference_mode():
        # Same software and seeds as the in-process trial: the same weights, so the same outputs.
        torch.testing.assert_close(model(digits_task.example_inputs), in_memory(digits_task.example_inputs))


# The remaining cases run the same entry point in-process (a subprocess each would add
# seconds of start-up for nothing they test).
def main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from autoprune.cli import main as cli_main

    try:
        code = cli_main(["apply", *args])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_no_qualifying_trial_exits_2_with_one_line(
    study: tuple[str, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, _ = study
    out = tmp_path / "out"
    code, _, stderr = main(
        ["--study", "real", "--storage", storage, "--max-accuracy-drop", "-50", "--out", str(out)], capsys
    )
    assert code == 2
    assert stderr == "autoprune apply: error: no trial has accuracy_drop <= -50 points; the smallest is 0 (trial 0)\n"
    assert not out.exists()


def test_apply_by_rule_with_final_fine_tune(
    study: tuple[str, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, trials = study
    out = tmp_path / "rule"
    args = ["--study", "real", "--storage", storage, "--max-accuracy-drop", "100", "--minimize", "macs"]
    code, stdout, stderr = main([*args, "--final-fine-tune", "5", "--out", str(out)], capsys)
    assert code == 0, stderr
    fewest = min(trials.values(), key=lambda t: (t[2]["macs"], t[0]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trial"] == fewest[0]
    assert metrics["applied"]["final_fine_tune_steps"] == 5
    assert metrics["applied"]["params"] == fewest[2]["params"]
    assert "smallest macs with accuracy_drop <= 100 points" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trial", "5"], "trial 5 is FAIL, not COMPLETE: RuntimeError: boom"),
        (["--trial", "4", "--max-accuracy-drop", "1"], "not both"),
        ([], "pick a trial with --trial N or a rule"),
        (["--trial", "1", "--final-fine-tune", "-1"], "--final-fine-tune must be >= 0"),
        (["--trial", "1", "--onnx"], "pip install onnx"),  # with onnx made to look missing
    ],
)
def test_bad_input_exits_2_with_one_line(
    study: tuple[str, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    if "--onnx" in args:
        real_find_spec = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real_find_spec(name, *a)
        )
    storage, _ = study
    out = tmp_path / "out"
    code, _, stderr = main(["--study", "real", "--storage", storage, *args, "--out", str(out)], capsys)
    assert code == 2
    assert stderr.startswith("autoprune apply: error: ") and stderr.count("\n") == 1 and message in stderr, stderr
    assert not out.exists()


def test_missing_study_and_usage_errors(
    study: tuple[str, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage, _ = study
    code, _, stderr = main(["--study", "nope", "--storage", storage, "--trial", "1", "--out", "o"], capsys)
    assert code == 2
    assert "no study 'nope'" in stderr and "'real'" in stderr and stderr.count("\n") == 1
    code, _, stderr = main(["--study", "real", "--storage", storage, "--trial", "1"], capsys)  # no --out
    assert code == 2 and "--out" in stderr
    # The default storage is relative to the working directory and reading never creates it.
    monkeypatch.chdir(tmp_path)
    code, _, stderr = main(["--study", "real", "--trial", "1", "--out", "o"], capsys)
    assert code == 2 and "no study database" in stderr
    assert not (tmp_path / "studies").exists()
