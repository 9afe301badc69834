"""Benchmark: autoprune's samplers against random search and a uniform structured sweep.

On the built-in ``digits`` task, at an equal budget of trials and fine-tuning, compare the
Pareto fronts (accuracy vs measured latency) of:
  - each Optuna sampler asked for (default: tpe and nsga2) over autoprune's per-layer space,
  - random search over the same space,
  - a sweep of uniform structured ratios (what a person does with Torch-Pruning by hand).
For each: hypervolume (Optuna's own), and the smallest accuracy drop among trials with at
least 2x and 3x measured latency speedup.

Reproduce:  python scripts/bench_search.py            (about 10 minutes on 2 cores; 3 seeds)
            python scripts/bench_search.py --trials 12 --samplers tpe --seeds 0   (quick check)
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

import autoprune as ap
from autoprune.config import SearchConfig
from autoprune.report import hypervolume
from autoprune.study import run_search


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
    hv = hypervolume(feasible, ref) if len(feasible) else 0.0

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


def _front(study: optuna.Study, max_drop: float) -> list[tuple[float, float]]:
    """Feasible non-dominated (drop, relative latency) points of a study."""
    pts = [
        (t.user_attrs["accuracy_drop"], 1.0 / t.user_attrs["speedup"])
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and t.user_attrs.get("speedup", 0) > 0
        and not t.user_attrs.get("early_rejected")
        and t.user_attrs["accuracy_drop"] <= max_drop
    ]
    return [p for p in pts if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts)]


def _dominated_share(front: list[tuple[float, float]], other: list[tuple[float, float]]) -> float:
    """Share of `other`'s front points weakly dominated by a point of `front`."""
    if not other:
        return float("nan")
    hit = sum(any(p[0] <= q[0] and p[1] <= q[1] for p in front) for q in other)
    return hit / len(other)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2"])
    parser.add_argument("--fine-tune", type=int, default=100, help="fine-tuning steps of every trial")
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench-search-"))
    task = ap.tasks.get("digits")
    per_seed: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        common = {
            "task": "digits",
            "objectives": ["accuracy", "latency"],
            "constraints": {"max_accuracy_drop": args.max_drop},
            "trials": args.trials,
            "seed": seed,
            "storage": f"sqlite:///{workdir}/bench.db",
            "report": False,
            "latency_cache": "study",  # each method measures its own trials (fair minutes, no shared hits)
        }
        # Equal budgets: one-shot pruning, the same fine-tuning steps in every trial.
        space = {"steps": [1, 1], "shapes": ["oneshot"], "fine_tune_steps": [args.fine_tune]}
        runs: dict[str, SearchConfig] = {}
        for sampler in [*args.samplers, "random"]:
            runs[sampler] = SearchConfig.from_dict(
                {**common, "study": f"{sampler}-{seed}", "sampler": sampler, "space": space}
            )
        grid = [round(a, 4) for a in np.linspace(0.05, 0.9, args.trials)]
        runs["uniform sweep"] = SearchConfig.from_dict(
            {**common, "study": f"uniform-{seed}", "sampler": "random", "reference_amounts": grid,
             "space": {**space, "methods": ["structured"], "granularity": "global"}}
        )
        studies = {}
        for name, cfg in runs.items():
            t0 = time.perf_counter()
            studies[name] = run_search(cfg, task)
            numbers = _front_numbers(studies[name], args.max_drop)
            numbers["minutes"] = (time.perf_counter() - t0) / 60
            per_seed.setdefault(name, []).append(numbers)
        uniform_front = _front(studies["uniform sweep"], args.max_drop)
        for name, study in studies.items():
            per_seed[name][-1]["dominates_uniform"] = _dominated_share(_front(study, args.max_drop), uniform_front)
            print(f"seed {seed} {name}: {per_seed[name][-1]}", flush=True)

    def med(name: str, key: str) -> float:
        values = [r[key] for r in per_seed[name] if not math.isnan(r[key])]
        return float(np.median(values)) if values else math.nan

    rows = [
        {"method": name, **{k: med(name, k) for k in per_seed[name][0]}, "seeds": len(per_seed[name])}
        for name in per_seed
    ]
    header = (
        "| method | trials | hypervolume | uniform front dominated | best drop at >=2x | best drop at >=3x "
        "| max feasible speedup | fine-tune steps | minutes |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trials']:.0f} | {r['hypervolume']:.3f} | {r['dominates_uniform']:.0%} | "
            f"{r['best_drop_2x']:.2f} | {r['best_drop_3x']:.2f} | {r['max_speedup_feasible']:.2f}x | "
            f"{r['fine_tune_steps']:.0f} | {r['minutes']:.1f} |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\nhypervolume: area dominated in (accuracy drop <= {args.max_drop} points, latency / unpruned latency <= 1);"
          " drops in percentage points (digits held-out set, 450 images: 1 image = 0.22 points)")
    print(f"medians over seeds {args.seeds}")
    print(f"reproduce: python scripts/bench_search.py --trials {args.trials} --samplers {' '.join(args.samplers)} "
          f"--seeds {' '.join(map(str, args.seeds))}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_search.json").write_text(json.dumps(rows, indent=2))
    (args.out / "bench_search.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
