"""Write the HTML report of a study: Pareto front, hypervolume history, per-layer schedules
of the Pareto trials, a pruning pattern, parameter importances and the trials table
(report.html and trials.csv in --out; one self-contained page that opens without internet)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from autoprune.config import DEFAULT_STORAGE

    parser.add_argument("--study", required=True, metavar="NAME", help="study name")
    parser.add_argument(
        "--storage", default=DEFAULT_STORAGE, metavar="URL", help=f"Optuna storage URL (default: {DEFAULT_STORAGE})"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: <study>-report/ next to the SQLite file, where the search writes it; "
        "studies/<study>-report/ for other storages)",
    )
    parser.add_argument("--png", action="store_true", help="also write a PNG of each figure (needs kaleido + Chromium)")
    parser.add_argument(
        "--trial",
        type=int,
        default=None,
        metavar="N",
        help="trial whose pruning pattern is shown (default: the Pareto trial that prunes most)",
    )
    parser.add_argument(
        "--axis",
        choices=("speedup", "latency"),
        default="speedup",
        help="x axis of the first screen's front: speedup over the unpruned model (default) or latency in ms",
    )
    parser.add_argument(
        "--layer",
        default=None,
        metavar="NAME",
        help="layer whose pruning pattern is shown (default: the largest pruned)",
    )


def run(args: argparse.Namespace) -> int:
    from autoprune.report import default_out_dir, write_report
    from autoprune.study import load_study

    study = load_study(args.study, args.storage).study
    out = args.out if args.out is not None else default_out_dir(args.study, args.storage)
    files = write_report(
        study,
        out,
        png=args.png,
        pattern_trial=args.trial,
        pattern_layer=args.layer,
        front_axis=args.axis,
    )
    print(f"report: {files.page}")
    print(f"trials: {files.csv}")
    for path in files.pngs:
        print(f"png: {path}")
    if files.png_message:
        print(f"autoprune report: {files.png_message}", file=sys.stderr)
    return 0
