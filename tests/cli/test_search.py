"""``autoprune search`` and ``layers`` on the command line: one-line refusals with exit code 2
(in this process, through ``autoprune.cli.main``), and the installed command in a subprocess
for a whole search, its resume and Ctrl-C (marked slow)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

import autoprune as ap
from autoprune.commands.search import summary_lines
from autoprune.config import SearchConfig
from autoprune.space import SearchSpace
from autoprune.study import counted_trials
from autoprune.study._recommend import recommend
from autoprune.study.keys import ROLE_SEARCH
from autoprune.testing.cli import run_cli


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoprune.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["search", "--trials", "0"], "trials = 0"),
        (["search", "--trials", "x"], "invalid int value"),
        (["search", "--objectives", "accuracy,colour"], "colour"),
        (["search", "--sampler", "grid"], "invalid choice"),
        (["search", "missing.toml"], "missing.toml"),
        (["search", "--task", "nope"], "unknown task 'nope'"),
        (["search", "--task", "no_such_module:make"], "cannot import module 'no_such_module'"),
        (["trials", "--study", "absent", "--storage", "sqlite:///x.db"], "no study database at 'x.db'"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["--study", "s"], ["t.toml"]])
def test_storage_folder_that_is_a_file_is_one_line(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "t.toml").write_text('task = "digits"\n[task_options]\nwidth = 8\nbatch_size = 16\n')
    proc = run_cli("search", *args, "--storage", "sqlite:///afile/x.db", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "'afile' or a folder above it is a file" in proc.stderr


def test_join_never_creates_a_study(tmp_path: Path) -> None:
    url = "sqlite:///studies/j.db"
    proc = run_cli("search", "--study", "nope", "--storage", url, "--join", "1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "study 'nope' does not exist" in proc.stderr and "after waiting 1 s" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/studies/j.db", include_best_trial=False) == []
    proc = run_cli("search", "--join", "5", cwd=tmp_path)
    assert proc.returncode == 2 and "--join needs --study" in proc.stderr


@pytest.mark.slow  # a sensitivity scan
def test_layers_shows_the_preflight_and_the_space(tmp_path: Path, tiny_task: ap.Task) -> None:
    (tmp_path / "l.toml").write_text('task = "digits"\nlatency_budget_s = 0.05\n[task_options]\nwidth = 8\nbatch_size = 16\n[space]\nsteps = 1\n')
    proc = run_cli("layers", "l.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    layers = ap.prunable_layers(tiny_task.model, tiny_task.example_inputs)
    for info in layers:
        row = next(line for line in lines if line.startswith(info.name + " "))
        assert f" {info.channels} " in row and ",".join(info.methods) in row
    assert "  classifier.3: its output channels are the model's output" in lines
    from autoprune.study import paying_space

    # the space the search samples: accuracy and latency on a dense backend leave unstructured out
    space_cfg, notice = paying_space(SearchConfig.from_dict({"space": {"steps": 1}}))
    space = SearchSpace(layers, space_cfg)
    assert lines[-2] == notice
    assert lines[-1] == (
        f"search space (layer granularity): {len(space.units)} units, at most {space.dimension} parameters per trial"
    )
    proc = run_cli("layers", "l.toml", "--sensitivity", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sensitivity (BatchNorm re-estimated"))
    rows = [line.split() for line in lines[start + 2 :]]
    structured = [r for r in rows if r[1] == "structured"]
    # every structured unit at the three default amounts; the output layer (unstructured only)
    # is not in the space the search samples, so it is not scanned
    assert {r[0] for r in structured} == {u.key for u in space.units if u.supports("structured")}
    assert sorted({float(r[2]) for r in structured}) == [0.25, 0.5, 0.75]
    assert all(float(r[5]) > 0 for r in structured) and not any(r[0] == "classifier.3" for r in rows)
    proc = run_cli("layers", "--task", "nowhere.module:make", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "nowhere.module" in proc.stderr


def test_bad_toml(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("trials = 5\n[space]\nsteps = [3, 1]\n")
    proc = run_cli("search", "bad.toml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "space.steps = [3, 1]" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_installed_search_then_trials(tmp_path: Path) -> None:
    cfg = textwrap.dedent(
        """
        task = "digits"
        trials = 4
        study = "cli"
        latency_budget_s = 0.05
        reference_amounts = [0.5]
        report = false
        sensitivity = false
        screening = false
        [task_options]
        width = 8
        batch_size = 16
        [space]
        fine_tune_steps = [0, 10]
        steps = [1, 2]
        """
    )
    (tmp_path / "s.toml").write_text(cfg)
    proc = _cli("search", "s.toml", "--quiet", "--storage", "sqlite:///studies/x.db", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Pareto front" in proc.stdout
    saved = json.loads((tmp_path / "studies" / "cli-report" / "config.json").read_text())
    assert saved["trials"] == 4 and saved["task_options"] == {"width": 8, "batch_size": 16}
    proc = _cli("trials", "--study", "cli", "--storage", "sqlite:///studies/x.db", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines()[1:] if line.strip()]
    assert len(rows) == 5
    # joining with just --study/--storage reuses the stored config; contradicting it is refused
    proc = _cli("search", "--study", "cli", "--storage", "sqlite:///studies/x.db", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = _cli(
        "search", "s.toml", "--storage", "sqlite:///studies/x.db", "--objectives", "accuracy,size", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "objectives" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_study(tmp_path: Path) -> None:
    import signal
    import time

    (tmp_path / "s.toml").write_text(
        textwrap.dedent(
            """
            task = "digits"
            trials = 6
            study = "int"
            latency_budget_s = 0.05
            reference_amounts = []
            global_reference_amounts = []
            report = false
            sensitivity = false
            screening = false
            [task_options]
            width = 8
            batch_size = 16
            [space]
            steps = [1, 1]
            fine_tune_steps = [400]
            """
        )
    )
    url = "sqlite:///studies/i.db"
    # A shell that starts pytest in the background (nohup cmd &) makes it ignore SIGINT, its
    # children inherit that, and Python then installs no KeyboardInterrupt handler: the search
    # would ignore the signal and finish (exit 0). The child gets the default back, as a
    # terminal's Ctrl-C would find it.
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "search", "s.toml", "--quiet", "--storage", url],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def running() -> list[optuna.trial.FrozenTrial]:
        try:
            study = optuna.load_study(study_name="int", storage=f"sqlite:///{tmp_path}/studies/i.db")
        except Exception:  # noqa: BLE001 - not created yet
            return []
        return [t for t in study.trials if t.user_attrs.get("role") == ROLE_SEARCH
                and t.state == optuna.trial.TrialState.RUNNING]

    end = time.monotonic() + 300
    while not running() and time.monotonic() < end:
        time.sleep(0.2)
    assert running(), "no search trial started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    study = optuna.load_study(study_name="int", storage=f"sqlite:///{tmp_path}/studies/i.db")
    cut = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(cut) == 1 and cut[0].state == optuna.trial.TrialState.FAIL
    # the same command resumes and runs only what is missing
    done_before = len(counted_trials(study))
    proc = subprocess.run([sys.executable, "-m", "autoprune.cli", "search", "s.toml", "--quiet", "--storage", url,
                           "--trials", str(done_before + 1)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="int", storage=f"sqlite:///{tmp_path}/studies/i.db")
    assert len(counted_trials(study)) == done_before + 1


@pytest.mark.slow
def test_installed_search_to_a_pipe_prints_one_line_per_trial_then_the_summary(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(
        'task = "digits"\ntrials = 4\nstudy = "pipe"\nlatency_budget_s = 0.05\nreference_amounts = [0.5]\n'
        "report = false\nsensitivity = false\nscreening = false\nneighbour_share = 0\n"
        "[task_options]\nwidth = 8\nbatch_size = 16\n[space]\nfine_tune_steps = [0, 10]\nsteps = [1, 2]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "search", "s.toml", "--storage", "sqlite:///s.db"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    assert [line[: len("[1/4")] for line in progress] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert "\r" not in proc.stderr and "trial/s" not in proc.stderr  # no bar redraws
    out = proc.stdout.splitlines()
    front = next(i for i, line in enumerate(out) if line.startswith("Pareto front (strict; max_accuracy_drop = 1"))
    assert out[front + 1].split()[:3] == ["trial", "kind", "val"]
    assert all(len(line) <= 100 for line in out[front:] if "--storage" not in line and "load_study" not in line)
    study = optuna.load_study(study_name="pipe", storage=f"sqlite:///{tmp_path}/s.db")
    assert out[front:front + 2 + len(recommend(study).rows)] == summary_lines(study, "sqlite:///s.db")[:2 + len(
        recommend(study).rows)]
    assert any(line.startswith("Recommended (chosen on validation") for line in out)
    assert out[-1] == "trials:  autoprune trials --study pipe --storage sqlite:///s.db    (every trial; --csv FILE: every column)"
