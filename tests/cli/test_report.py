"""``autoprune report``: the page written next to the database, a missing study, exit code 2
with one line, and the installed command in a subprocess (studies from
``autoprune.testing.studies.synthetic_report_study``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import autoprune as ap
from autoprune.commands import report as report_cmd
from autoprune.testing.studies import synthetic_report_study as make_study


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    report_cmd.add_arguments(parser)
    return report_cmd.run(parser.parse_args(argv))


def test_writes_the_report_next_to_the_database(tmp_path: Path, capsys: Any) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    make_study(2, 12, storage=storage, name="demo")
    assert _run_cli(["--study", "demo", "--storage", storage]) == 0
    assert (tmp_path / "demo-report" / "report.html").is_file()  # where the search writes it
    assert (tmp_path / "demo-report" / "trials.csv").is_file()
    assert "report.html" in capsys.readouterr().out


def test_missing_study_lists_the_studies(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    make_study(2, 3, storage=storage, name="alpha")
    make_study(2, 3, storage=storage, name="beta")
    with pytest.raises(ap.AutopruneError) as err:
        ap.load_study("gamma", storage)
    message = str(err.value)
    assert "\n" not in message and "'gamma'" in message and "alpha" in message and "beta" in message
    assert not (tmp_path / "nope.db").exists()
    with pytest.raises(ap.AutopruneError, match="no study database"):
        _run_cli(["--study", "x", "--storage", f"sqlite:///{tmp_path / 'nope.db'}", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "nope.db").exists()  # a mistyped path creates no database


def test_main_exits_2_with_one_line(tmp_path: Path, capsys: Any) -> None:
    from autoprune.cli import main

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    make_study(2, 3, storage=storage, name="alpha")
    assert main(["report", "--study", "gamma", "--storage", storage, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoprune report: error:") and "alpha" in err and "\n" not in err


@pytest.mark.slow
def test_installed_cli_in_a_subprocess(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    make_study(2, 12, storage=storage, name="demo")
    out = tmp_path / "out"
    ok = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "report", "--study", "demo", "--storage", storage, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert (out / "report.html").is_file() and (out / "trials.csv").is_file()
    assert ok.stderr == ""
