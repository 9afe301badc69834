"""Benchmark: autoprune's samplers against random search and a uniform structured sweep.

On the built-in ``digits`` task, at an equal budget of trials and fine-tuning, compare the
Pareto fronts (accuracy vs measured latency) of:
  - each Optuna sampler asked for (default: tpe and nsga2) over autoprune's per-layer space,
  - random search over the same space,
  - a sweep of uniform structured ratios (what a person does with Torch-Pruning by hand).
For each: hypervolume (Optuna's own), and the smallest accuracy drop among trials with at
least 2x and 3x measured latency speedup.

Reproduce:  python scripts/bench_search.py            (about 10 minutes on 2 cores)
            python scripts/bench_search.py --trials 12 --samplers tpe   (quick check)
Numbers are written to results/bench_search.json and results/bench_search.md.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume

import autoprune as ap
from autoprune._search import run_search
from autoprune.config import SearchConfig


def _front_numbers(study: optuna.Study, max_drop: float) -> dict[str, float]:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # Minimisation form: (accuracy drop in points, latency relative to the unpruned model).
    points = [
        (t.user_attrs["accuracy_drop"], 1.0 / t.user_attrs["speedup"])
        for t in done
        if t.user_attrs.get("speedup", 0) > 0 and not t.user_attrs.get("early_rejected")
    ]
    feasible = np.array([p for p in points if p[0] <= max_drop and p[1] <= 1.0]) if points else np.zeros((0, 2))
    ref = np.array([max_drop, 1.0])
    hv = float(compute_hypervolume(feasible, ref)) if len(feasible) else 0.0

    def best_drop(min_speedup: float) -> float:
        drops = [t.user_attrs["accuracy_drop"] for t in done
                 if t.user_attrs.get("speedup", 0) >= min_speedup and not t.user_attrs.get("early_rejected")]
        return min(drops) if drops else math.nan

    return {
        "hypervolume": hv,
        "best_drop_2x": best_drop(2.0),
        "best_drop_3x": best_drop(3.0),
        "max_speedup_feasible": max(
            (t.user_attrs["speedup"] for t in done if t.user_attrs.get("feasible") and "speedup" in t.user_attrs),
            default=math.nan,
        ),
        "trials": len(done),
        "fine_tune_steps": sum(
            ap.Schedule.from_json(t.user_attrs["schedule"]).fine_tune_steps
            * ap.Schedule.from_json(t.user_attrs["schedule"]).steps
            for t in done
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2"])
    parser.add_argument("--fine-tune", type=int, default=100, help="fine-tuning steps of every trial")
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-search-"))
    task = ap.tasks.get("digits")
    common = {
        "task": "digits",
        "objectives": ["accuracy", "latency"],
        "constraints": {"max_accuracy_drop": args.max_drop},
        "trials": args.trials,
        "seed": args.seed,
        "storage": f"sqlite:///{workdir}/bench.db",
        "report": False,
    }
    # Equal budgets: one-shot pruning, the same fine-tuning steps in every trial.
    space = {"steps": [1, 1], "shapes": ["oneshot"], "fine_tune_steps": [args.fine_tune]}
    runs: dict[str, SearchConfig] = {}
    for sampler in [*args.samplers, "random"]:
        runs[sampler] = SearchConfig.from_dict({**common, "study": sampler, "sampler": sampler, "space": space})
    grid = [round(a, 4) for a in np.linspace(0.05, 0.9, args.trials)]
    runs["uniform sweep"] = SearchConfig.from_dict(
        {**common, "study": "uniform", "sampler": "random", "reference_amounts": grid,
         "space": {**space, "methods": ["structured"], "granularity": "global"}}
    )
    rows = []
    for name, cfg in runs.items():
        t0 = time.perf_counter()
        study = run_search(cfg, task)
        numbers = _front_numbers(study, args.max_drop)
        numbers["minutes"] = (time.perf_counter() - t0) / 60
        rows.append({"method": name, **numbers})
        print(f"{name}: {numbers}", flush=True)

    header = "| method | trials | hypervolume | best drop at >=2x | best drop at >=3x | max feasible speedup | fine-tune steps | minutes |"
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trials']} | {r['hypervolume']:.4f} | {r['best_drop_2x']:.2f} | "
            f"{r['best_drop_3x']:.2f} | {r['max_speedup_feasible']:.2f}x | {r['fine_tune_steps']} | {r['minutes']:.1f} |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\nhypervolume: area dominated in (accuracy drop <= {args.max_drop} points, latency / unpruned latency <= 1);"
          " drops in percentage points (digits held-out set, 450 images: 1 image = 0.22 points)")
    print(f"reproduce: python scripts/bench_search.py --trials {args.trials} --samplers {' '.join(args.samplers)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_search.json").write_text(json.dumps(rows, indent=2))
    (args.out / "bench_search.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
