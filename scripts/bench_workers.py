"""Benchmark: search throughput with 1, 2 and 4 worker processes, on SQLite and PostgreSQL,
and how far the latency that workers measure during a parallel search is from the same model
measured alone.

Each run searches the built-in ``digits`` task with the same one-shot space and the same
fine-tuning per trial, so trials cost about the same everywhere. The unpruned reference is
evaluated first and not timed; then ``--trials`` trials run with N workers (joblib processes
on one study). Afterwards every schedule whose latency a worker measured (not from the cache)
is re-applied and measured alone, on the same target, and compared.

Reproduce:  python scripts/bench_workers.py                    (about 10 minutes on 2 cores)
            python scripts/bench_workers.py --trials 6 --workers 1 2 --storages sqlite   (quick)
Numbers go to results/bench_workers.json and results/bench_workers.md. PostgreSQL comes from
Debian's postgresql package, started on 127.0.0.1 for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from _results import run_meta, write_result

import autoprune as ap
from autoprune.config import SearchConfig
from autoprune.evaluation import measure_latency
from autoprune.study import run_search


@contextlib.contextmanager
def _storage(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir}/bench.db"
        return
    from autoprune.testing.postgres import temporary_postgres

    with temporary_postgres() as url:
        yield url


def _fidelity(study: optuna.Study, task: ap.Task, target: str, budget: float) -> list[float]:
    """Relative difference (%) of each worker-measured latency against the model alone."""
    diffs = []
    for t in study.trials:
        a = t.user_attrs
        if t.state != optuna.trial.TrialState.COMPLETE or a.get("latency_cached") or a.get("early_rejected"):
            continue
        schedule = ap.Schedule.from_json(a["schedule"])
        model = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs)
        alone = measure_latency(model, task.example_inputs, target, time_budget_s=budget).median_ms
        diffs.append(100.0 * (a["latency_ms"] - alone) / alone)
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--storages", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--fine-tune", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    task = ap.tasks.get("digits")
    rows: list[dict[str, Any]] = []
    for kind in args.storages:
        with _storage(kind, workdir) as url:
            base_rate = None
            for n in args.workers:
                data = {
                    "task": "digits",
                    "study": f"{kind}-w{n}-{int(time.time())}",
                    "storage": url,
                    "workers": n,
                    "trials": 1,
                    "report": False,
                    "reference_amounts": [],
                    "sampler": "random",
                    "latency_budget_s": 0.5,
                    "latency_cache": "study",  # each run measures for itself (no hits from earlier runs)
                    "space": {"steps": [1, 1], "shapes": ["oneshot"], "fine_tune_steps": [args.fine_tune]},
                }
                cfg = SearchConfig.from_dict(data)
                run_search(cfg, task)  # the unpruned reference and one trial: not timed
                cfg = cfg.merged(trials=args.trials + 1)
                start = time.perf_counter()
                study = run_search(cfg, task)
                minutes = (time.perf_counter() - start) / 60
                rate = args.trials / minutes
                base_rate = base_rate or rate
                diffs = _fidelity(study, task, cfg.target, cfg.latency_budget_s)
                row = {
                    "storage": kind,
                    "workers": n,
                    "trials": args.trials,
                    "minutes": minutes,
                    "trials_per_min": rate,
                    "vs_1_worker": rate / base_rate,
                    "latency_checked": len(diffs),
                    "latency_median_abs_diff_pct": statistics.median(abs(d) for d in diffs) if diffs else float("nan"),
                    "latency_max_abs_diff_pct": max(abs(d) for d in diffs) if diffs else float("nan"),
                }
                rows.append(row)
                print(row, flush=True)

    lines = [
        "| storage | workers | trials | minutes | trials/min | vs 1 worker | latency vs alone: median abs diff | max abs diff (n) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['storage']} | {r['workers']} | {r['trials']} | {r['minutes']:.2f} | {r['trials_per_min']:.1f} | "
            f"{r['vs_1_worker']:.2f}x | {r['latency_median_abs_diff_pct']:.1f}% | "
            f"{r['latency_max_abs_diff_pct']:.1f}% ({r['latency_checked']}) |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\nreproduce: python scripts/bench_workers.py --trials {args.trials} --workers "
          f"{' '.join(map(str, args.workers))} --storages {' '.join(args.storages)}")
    write_result(args.out / "bench_workers.json", rows, table=table, meta=run_meta())
    (args.out / "bench_workers.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
