"""Print the trials table of a study: one row per trial with its state, role, objective
values, metrics, feasibility and schedule summary (or its error)."""

from __future__ import annotations

import argparse

from autoprune.config import DEFAULT_STORAGE

# Columns shown on a terminal; --csv writes every column of the trials table.
_SHOWN = ("number", "state", "role", "feasible", "accuracy", "accuracy_drop", "latency_ms", "speedup",
          "sparse_bytes", "macs", "schedule", "error")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    p.add_argument("--pareto", action="store_true", help="only the feasible Pareto trials")
    p.add_argument("--csv", metavar="FILE", help="also write the full table as CSV")


def run(args: argparse.Namespace) -> int:
    from autoprune.study import load_study

    results = load_study(args.study, args.storage)
    # --pareto: the same front as StudyResults.pareto(): feasible, complete, fully run
    df = (results.pareto() if args.pareto else results.trials_table()).reset_index()
    if args.csv:
        df.to_csv(args.csv, index=False)
    shown = df[[c for c in _SHOWN if c in df.columns]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}") if len(shown) else "(no trials)")
    return 0
