"""Print the trials table of a study: one row per trial with its state, role, objective
values, metrics, feasibility and schedule summary (or its error)."""

from __future__ import annotations

import argparse

from autoprune.config import DEFAULT_STORAGE

# Columns shown on a terminal; --csv writes every column of the trials table.
_SHOWN = ("number", "state", "role", "feasible", "accuracy", "accuracy_drop", "accuracy_drop_se", "latency_ms", "speedup",
          "sparse_bytes", "macs", "schedule", "error")


def _points(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid tolerance {text!r}; allowed: a number of points >= 0")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    p.add_argument("--pareto", action="store_true", help="only the trials on the study's front (feasible, fully run)")
    p.add_argument(
        "--tolerance",
        type=_points,
        metavar="POINTS",
        help="with --pareto: a trial leaves the front only when another, no worse anywhere, is this many points "
        "more accurate on validation (default: the study's front_tolerance; 0: the strict Pareto front)",
    )
    p.add_argument("--csv", metavar="FILE", help="also write the full table as CSV")


def run(args: argparse.Namespace) -> int:
    from autoprune.study import load_study

    results = load_study(args.study, args.storage)
    # --pareto: the same front as StudyResults.pareto(): feasible, complete, fully run
    if args.tolerance is not None and not args.pareto:
        from autoprune._errors import ConfigError

        raise ConfigError(f"--tolerance {args.tolerance:g} applies to --pareto only; add --pareto")
    df = (results.pareto(args.tolerance) if args.pareto else results.trials_table()).reset_index()
    if args.csv:
        df.to_csv(args.csv, index=False)
    shown = df[[c for c in _SHOWN if c in df.columns]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}") if len(shown) else "(no trials)")
    return 0
