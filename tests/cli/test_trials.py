"""`autoprune trials`: the table it prints and writes, and its front tolerance (the results
API it shows: tests/study/test_results.py; the studies: ``autoprune.testing.studies``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import autoprune as ap
from autoprune.testing.cli import CliRun, run_cli
from autoprune.testing.studies import synthetic_results_study, tolerance_study


def test_cli_trials_pareto_tolerance(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/t.db"
    tolerance_study(storage, 0.5)

    def trials(*flags: str) -> CliRun:
        return run_cli("trials", "--study", "tol-0.5", "--storage", storage, *flags)

    def numbers(proc: CliRun) -> list[int]:
        assert proc.returncode == 0, proc.stderr
        return [int(line.split()[0]) for line in proc.stdout.splitlines()[1:]]

    assert numbers(trials("--pareto")) == [0, 1, 2, 4, 5]  # the study's front_tolerance
    assert numbers(trials("--pareto", "--tolerance", "0")) == [1, 4, 5]
    bad = trials("--pareto", "--tolerance", "-1")
    assert bad.returncode == 2 and "invalid tolerance '-1'; allowed: a number of points >= 0" in bad.stderr
    alone = trials("--tolerance", "0.2")
    assert alone.returncode == 2
    assert alone.stderr.strip() == "autoprune trials: error: --tolerance 0.2 applies to --pareto only; add --pareto"


def test_cli_trials_shows_the_one_trials_table(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    synthetic_results_study(storage)
    synthetic = ap.load_study("synthetic", storage)
    for flag, expected in (([], synthetic.trials_table()), (["--pareto"], synthetic.pareto())):
        csv = tmp_path / "t.csv"
        args = ["trials", "--study", "synthetic", "--storage", storage, "--csv", str(csv), *flag]
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        table = pd.read_csv(csv)
        assert list(table["number"]) == list(expected.index)  # --pareto: the front pareto() gives
        assert list(table.columns) == ["number", *expected.columns]
