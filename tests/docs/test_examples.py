"""What docs/ shows as code runs: docs/apply_example.py and the command in its docstring, the
Python blocks of docs/your-own-model.md (with small stand-ins for the user's own model and
data, which the page leaves to the reader), the `autoprune trials | apply | report | layers`
lines of docs/cli.md on a small digits study, and every `python scripts/...` or
`python docs/...` line of a docs/ page names a file that exists and options it takes.

docs/byo_model.py (tests/docs/test_byo_model.py), README's blocks and every `autoprune` line's
parsing (tests/docs/test_readme.py) and docs/language-models.md with docs/lm_example.py
(tests/docs/test_lm_example.py, tests/lm/) are tested elsewhere.
"""

from __future__ import annotations

import functools
import os
import re
import runpy
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Pages of the language-model work, tested with it.
OTHERS = {"language-models.md"}


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


# ---------------------------------------------------------------------------- apply_example.py
@pytest.mark.slow
def test_apply_example_runs_as_written_and_its_cli_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example's lines, in this process, at a test's scale: its search times each model
    for 0.2 s instead of the default 2 s and fine-tunes each trial for 20 steps instead of
    100, and its final speedup is timed for 0.2 s (the numbers are rougher; what is checked
    is that every step runs and prints what it says)."""
    import tempfile

    import torch

    import autoprune as ap

    search, measure_speedup = ap.search, ap.measure_speedup
    monkeypatch.setattr(ap, "search", functools.partial(search, latency_budget_s=0.2, space={"fine_tune_steps": [20]}))
    monkeypatch.setattr(ap, "measure_speedup", functools.partial(measure_speedup, budget_s=0.2))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runpy.run_path(str(DOCS / "apply_example.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert re.search(r"^picked trial \d+", out, flags=re.M), out[-2000:]
    assert re.search(r"^accuracy \d+\.\d\d \(trial \d+\.\d\d\)$", out, flags=re.M)
    assert re.search(r"^speedup \d+\.\d\dx \(95% interval \d+\.\d\d to \d+\.\d\d.*params \d+ -> \d+", out, flags=re.M)
    (workdir,) = tmp_path.glob("autoprune-example-*")  # where it wrote, as it says
    assert (workdir / "pruned" / "schedule.json").is_file()

    # The docstring's command line, from the folder that holds demo.db.
    doc = (DOCS / "apply_example.py").read_text()
    (line,) = [s.strip() for s in doc.splitlines() if s.strip().startswith("autoprune apply ")]
    from autoprune.testing.cli import run_cli

    (workdir / "pruned" / "schedule.json").unlink()
    cli = run_cli(*shlex.split(line)[1:], cwd=workdir)  # in this process: the installed one in tests/cli
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert (workdir / "pruned" / "schedule.json").is_file()


# ---------------------------------------------------------------------------- your-own-model.md
# What the page leaves to the reader: a trained model, its data and the user's own functions.
STAND_INS = textwrap.dedent(
    """
    from collections import OrderedDict

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import autoprune as ap

    def load_my_trained_model():
        torch.manual_seed(0)
        return nn.Sequential(OrderedDict(
            features=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1)),
            classifier=nn.Sequential(nn.Flatten(), nn.Linear(8, 10)),
        ))

    _g = torch.Generator().manual_seed(0)

    def _data(n):
        return TensorDataset(torch.randn(n, 3, 16, 16, generator=_g), torch.randint(0, 10, (n,), generator=_g))

    train_data, val_data, test_data = _data(128), _data(64), _data(64)
    train_loader = DataLoader(train_data, batch_size=32, shuffle=True)
    val_loader = DataLoader(val_data, batch_size=32)
    test_loader = DataLoader(test_data, batch_size=32)

    def my_hits(m, data):
        with torch.no_grad():
            return m(data.tensors[0]).argmax(1) == data.tensors[1]

    def my_accuracy(m, data):
        return float(my_hits(m, data).double().mean() * 100)

    def my_train(m, steps):
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        for _, (x, y) in zip(range(steps), train_loader):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    """
)


@pytest.mark.slow
def test_your_own_model_blocks_run_as_written() -> None:
    import torch

    import autoprune as ap

    loaders_block, by_hand_block, schedule_block = _blocks((DOCS / "your-own-model.md").read_text(), "python")
    ns: dict[str, Any] = {}
    exec(compile(STAND_INS, "stand-ins", "exec"), ns)  # noqa: S102

    exec(compile(loaders_block, "your-own-model.md: from_loaders", "exec"), ns)  # noqa: S102
    task = ns["make_task"]()
    assert isinstance(task, ap.Task) and task.test is not None
    # the default metric: top-1 in percent on val_loader (the reader's own function agrees)
    assert task.evaluate(task.model) == pytest.approx(ns["my_accuracy"](task.model, ns["val_data"]), abs=1e-9)

    exec(compile(by_hand_block, "your-own-model.md: by hand", "exec"), ns)  # noqa: S102
    mine = ns["make_task"]()
    assert mine.name == "mine" and tuple(mine.example_inputs.shape) == (32, 3, 224, 224)
    assert mine.evaluate(mine.model) == pytest.approx(float(mine.evaluate_samples(mine.model).mean()))

    ns.update(model=ns["load_my_trained_model"](), x=torch.randn(4, 3, 16, 16), task=task)
    exec(compile(schedule_block, "your-own-model.md: a Schedule by hand", "exec"), ns)  # noqa: S102
    assert ns["same"] == ns["plan"]
    assert ns["pruned"].features[0].out_channels == 4  # structured 50% of 8 channels, removed
    assert ns["model"].features[0].out_channels == 8  # a pruned copy: the model is untouched


# ---------------------------------------------------------------------------- python lines
def _python_lines(text: str) -> list[tuple[str, list[str]]]:
    """(script, its arguments) of every `python scripts/X.py ...` or `python docs/X.py ...` in
    the page's bash blocks (continuations joined, comments dropped)."""
    found = []
    for block in _blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].split("  #")[0]
            if line.lstrip().startswith("#"):
                continue
            for match in re.finditer(r"python ((?:scripts|docs)/[\w/]+\.py)([^;&|]*)", line):
                found.append((match.group(1), shlex.split(match.group(2))))
    return found


PAGES = [p for p in sorted(DOCS.glob("*.md")) if p.name not in OTHERS]
LINES = [(page.name, script, args) for page in PAGES for script, args in _python_lines(page.read_text())]


def test_the_pages_show_python_lines() -> None:
    assert {(page, script) for page, script, _ in LINES} >= {
        ("your-own-model.md", "docs/byo_model.py"),
        ("measurements.md", "scripts/bench_search.py"),
    }


@pytest.mark.parametrize(("page", "script", "args"), LINES, ids=[f"{p}:{s}" for p, s, _ in LINES])
def test_python_lines_name_a_script_and_options_it_takes(page: str, script: str, args: list[str]) -> None:
    assert (ROOT / script).is_file(), f"{page} runs {script}, which does not exist"
    options = {a.split("=")[0] for a in args if a.startswith("--")}
    if not options:
        return
    returncode, stdout, stderr = _help(script)
    assert returncode == 0, stderr[-2000:]
    for option in options:
        assert re.search(rf"{re.escape(option)}\b", stdout), f"{page}: {script} takes no {option}"


@functools.cache
def _help(script: str) -> tuple[int, str, str]:
    """``python SCRIPT --help``, run once per script however many lines name it (seconds each)."""
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stdout, done.stderr


# ---------------------------------------------------------------------------- cli.md
CLI_RUN = ("trials", "apply", "report", "layers")
# Parsed (tests/docs/test_readme.py) but not run: the ResNet-18 sensitivity scan alone took 9 min
# here with one thread; docs/byo_model.py's test already runs that task at a small scale.
CLI_NOT_RUN = ("autoprune layers --task docs.examples_module:make_task --sensitivity",)


@pytest.mark.slow
def test_cli_page_lines_run_on_a_small_digits_study(tmp_path: Path) -> None:
    """Every `autoprune trials | apply | report | layers` line of docs/cli.md but CLI_NOT_RUN, as
    written, in a folder whose default storage holds a small `digits` study (the `search` lines
    are parsed by tests/docs/test_readme.py; a real search of each would take an hour)."""
    import autoprune as ap
    from autoprune.testing.cli import run_cli

    small = {"width": 16, "batch_size": 32}
    cfg = ap.SearchConfig.from_dict(
        {
            "task": "digits", "task_options": small, "trials": 24, "storage": "sqlite:///studies/autoprune.db",
            "study": "digits", "latency_budget_s": 0.05, "reference_amounts": [0.5], "report": False,
            "sensitivity": False, "screening": False, "global_reference_amounts": [], "reference_refinements": 0,
            "neighbour_share": 0, "constraints": {"max_accuracy_drop": 100.0}, "sampler": "random",
            "space": {"fine_tune_steps": [0, 10], "steps": [1, 1], "round_to": None},
        }
    )  # fmt: skip
    (tmp_path / "studies").mkdir()
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        study = ap.search(ap.tasks.get("digits", **small), config=cfg)
    finally:
        os.chdir(cwd)
    assert study.trials[21].state.name == "COMPLETE"  # the page applies trial 21

    lines = []
    for block in _blocks((DOCS / "cli.md").read_text(), "bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("autoprune ") and line.split()[1] in CLI_RUN and line not in CLI_NOT_RUN:
                lines.append(line)
    assert {line.split()[1] for line in lines} == set(CLI_RUN) and len(lines) >= 10
    for line in lines:  # in this process (the installed command: tests/cli/test_search.py)
        done = run_cli(*shlex.split(line)[1:], cwd=tmp_path)
        assert done.returncode == 0, f"{line}: {done.stderr[-2000:]}"
    assert (tmp_path / "trials.csv").is_file() and (tmp_path / "studies" / "digits-report" / "report.html").is_file()
    assert (tmp_path / "pruned" / "schedule.json").is_file() and (tmp_path / "report" / "report.html").is_file()
