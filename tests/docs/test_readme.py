"""The README is a user's page, and what it and docs/ show runs: the Python examples (as
written, at a small scale), every `autoprune ...` command line (parsed by the real parser),
the from_loaders excerpt (the code of the tested worked example), the command table."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoprune.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _command_lines(text: str) -> list[str]:
    """Every `autoprune ...` line of the bash blocks, without its comment."""
    lines = []
    for block in _blocks(text, "bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                part = part.split("  #")[0].split(" # ")[0].strip()
                if part.startswith("autoprune "):
                    lines.append(part)
    return lines


# ---------------------------------------------------------------------------- the page
def test_readme_is_a_short_users_page_without_history() -> None:
    lines = README.splitlines()
    assert len(lines) <= 240
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README), "a date"
    assert not re.search(r"\b(?:at|commit) [0-9a-f]{7,40}\b", README), "a commit hash"
    titles = [line[3:] for line in lines if line.startswith("## ")]
    assert titles == [
        "What you see", "Pick, apply, save, reload", "Your own model", "Command line", "Targets and runtimes",
        "Many workers", "Language models", "Documentation", "Architecture", "Tests",
    ]
    lm = _section(README, "Language models")
    assert "autoprune search --task tinylm" in lm and "[docs/language-models.md](docs/language-models.md)" in lm
    # the two set-up commands, exactly as CI and a new user run them
    assert _blocks(README, "bash")[0].splitlines() == [
        "pip install -c constraints.txt -e . && autoprune search    # the main job: a pruning search on the built-in "
        "digits task",
        "bash scripts/test.sh                                       # the tests: installs what they need, then ruff, "
        "mypy, pytest",
    ]


@pytest.mark.parametrize("doc", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_links_to_docs_exist(doc: Path) -> None:
    text = doc.read_text()
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.(?:md|py))\)", text):
        path = (doc.parent / target) if doc.parent.name == "docs" else ROOT / target
        assert path.is_file(), f"{doc.name} links to {target}, which does not exist"


def test_readme_command_table_names_every_command() -> None:
    rows = [line for line in _section(README, "Command line").splitlines() if line.startswith("| `autoprune ")]
    assert [row.split("`")[1].split()[1] for row in rows] == list(COMMANDS)


@pytest.mark.parametrize("doc", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_command_line_shown_parses(doc: Path) -> None:
    parser = build_parser()
    commands = _command_lines(doc.read_text())
    for line in commands:
        try:
            parser.parse_args(shlex.split(line)[1:])
        except SystemExit as exc:  # argparse's way to refuse
            raise AssertionError(f"{doc.name}: {line!r} does not parse") from exc
    if doc.name in ("README.md", "cli.md"):
        assert {c.split()[1] for c in commands} >= ({"search"} if doc.name == "README.md" else set(COMMANDS))


def test_readme_from_loaders_is_the_worked_example_s_code() -> None:
    # The excerpt is docs/examples_module.py's, which tests/docs/test_byo_model.py runs.
    (block,) = _blocks(_section(README, "Your own model"), "python")
    source = (ROOT / "docs" / "examples_module.py").read_text()
    assert "ap.Task.from_loaders(" in block and block in source


def test_readme_output_excerpt_fits_a_terminal() -> None:
    (block,) = [b for b in _blocks(_section(README, "What you see"), "") if "Pareto front" in b]
    lines = block.splitlines()
    front = lines.index(next(line for line in lines if line.startswith("Pareto front")))
    # the summary (front, picks) is the new output: 100 columns
    assert all(len(line) <= 100 for line in lines[front:] if not line.startswith(("report:", "trials:")))
    assert any(line.startswith("  fastest ") for line in lines)
    assert any("autoprune apply --study digits --trial " in line for line in lines)


# ---------------------------------------------------------------------------- the examples run
@pytest.mark.slow
def test_readme_python_examples_run_as_written(tmp_path: Path) -> None:
    """The README's two Python blocks, run after a search (a tiny one of the digits task, under
    the study name and storage `autoprune search` uses), in that search's folder. The only
    changes: `ap.tasks.get_task("digits")` (or `ap.tasks.get`) builds the small digits model the
    tests use, and `ap.measure_speedup` times for 0.2 s instead of 2 s."""
    import autoprune as ap

    small = {"width": 16, "batch_size": 32}
    cfg = ap.SearchConfig.from_dict(
        {
            "task": "digits", "task_options": small, "trials": 3, "storage": "sqlite:///studies/autoprune.db",
            "study": "digits", "latency_budget_s": 0.05, "reference_amounts": [0.5], "report": False,
            "sensitivity": False, "screening": False, "global_reference_amounts": [], "reference_refinements": 0,
            "neighbour_share": 0, "space": {"fine_tune_steps": [0, 10], "steps": [1, 2], "round_to": None},
        }
    )
    (tmp_path / "studies").mkdir()
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        ap.search(ap.tasks.get("digits", **small), config=cfg)
    finally:
        os.chdir(cwd)
    pick_block, by_hand_block = _blocks(_section(README, "Pick, apply, save, reload"), "python")
    prelude = textwrap.dedent(
        f"""
        import functools
        import autoprune as ap
        ap.tasks.get = ap.tasks.get_task = functools.partial(ap.tasks.get_task, **{small!r})
        ap.measure_speedup = functools.partial(ap.measure_speedup, budget_s=0.2)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    for block in (pick_block, by_hand_block):
        script = tmp_path / "example.py"
        script.write_text(prelude + block)
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        if block is pick_block:
            out = done.stdout.splitlines()
            assert out[0].startswith("trial ") and " | " in out[0]  # picked.summary()
            assert re.fullmatch(r"test accuracy \d+\.\d\d% \(unpruned \d+\.\d\d%\)", out[1])
            assert re.fullmatch(r"\d+\.\d\dx faster \(\d+\.\d\d-\d+\.\d\d\)", out[2])
            assert (tmp_path / "pruned" / "schedule.json").is_file()
        else:
            out = done.stdout.splitlines()
            assert re.fullmatch(r"uniform 50%: validation \d+\.\d\d% \(unpruned \d+\.\d\d%\)", out[0])
            assert out[1] == "True"
