"""Print the trials table of a study: one row per trial with its state, role, metrics,
feasibility and schedule summary (or its error)."""

from __future__ import annotations

import argparse

from autoprune.config import DEFAULT_STORAGE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    p.add_argument("--pareto", action="store_true", help="only the feasible Pareto trials")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")


def trials_table(study: object) -> object:
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):  # type: ignore[attr-defined]
        a = t.user_attrs
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "role": a.get("role", ""),
                "feasible": a.get("feasible"),
                "accuracy": a.get("accuracy"),
                "drop": a.get("accuracy_drop"),
                "latency_ms": a.get("latency_ms"),
                "speedup": a.get("speedup"),
                "size_kB": None if a.get("sparse_bytes") is None else a["sparse_bytes"] / 1000,
                "MMACs": None if a.get("macs") is None else a["macs"] / 1e6,
                "schedule": a.get("schedule_summary", ""),
                "error": a.get("error", ""),
            }
        )
    return pd.DataFrame(rows)


def run(args: argparse.Namespace) -> int:
    from autoprune.config import SearchConfig
    from autoprune._search import open_study, pareto_table

    cfg = SearchConfig(storage=args.storage, study=args.study)
    study = open_study(cfg, create=False, check=False)
    df = pareto_table(study) if args.pareto else trials_table(study)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}") if len(df) else "(no trials)")  # type: ignore[attr-defined]
    if args.csv:
        df.to_csv(args.csv, index=False)  # type: ignore[attr-defined]
    return 0
