"""Benchmark (the acceptance measure): autoprune's search against the two hand sweeps.

For each task and seed, in ONE run:
  - autoprune: ``ap.search`` with its defaults (accuracy and latency, ``--trials`` trials);
    every trial on the study's front (``pareto_trials()``: feasible, full-fidelity trials that
    no other beats by ``front_tolerance`` points of validation accuracy or more; what a user
    picks from) is re-applied from its stored JSON and fine-tuned as its schedule says;
  - uniform sweep: what a person writes by hand with Torch-Pruning: MetaPruner with L2
    magnitude importance, the same ratio for every layer (20..90%), the output layer ignored;
  - global sweep: the same with ``global_pruning=True`` (20..80%).
Every hand point is fine-tuned with the same number of steps as one full-fidelity search
trial. Every point, from all three methods, is scored on the task's TEST split (the search
never saw it) and timed in alternation with the unpruned model (``ap.measure_speedup``: ABBA
rounds, median of per-round ratios; measured again with more time when a loaded machine
scattered it), so machine drift cancels.

Reported per method (median over seeds): the best speedup at <= 0.5 (--max-drop), 1 and 2
points of test-accuracy drop; hypervolume of (test drop in points, latency / unpruned latency)
against the reference point (--hv-drop points, 1.0), and against (1 point, 1.0): the region
the search's default constraint (max_accuracy_drop = 1) asks it to cover, where the sweeps'
points beyond it do not count; and the fine-tune steps each method spent.

Reproduce:  python scripts/bench_search.py                      (both tasks, 3 seeds, 40 trials)
            python scripts/bench_search.py --tasks digits --seeds 0 --trials 12   (quick check)
Numbers are written to results/bench_search.json and results/bench_search.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from _results import run_meta, write_result
from torch import nn

import autoprune as ap
from autoprune.evaluation import cached_speedup
from autoprune.report import hypervolume


def _output_layer(model: nn.Module) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SystemExit("the hand sweeps need a model whose last layer is an nn.Linear")
    return linears[-1]


def hand_pruned(task: ap.Task, amount: float, *, global_pruning: bool, fine_tune_steps: int) -> nn.Module:
    """What a person writes with Torch-Pruning in a few lines, then the task's fine-tune."""
    import torch_pruning as tp

    model = copy.deepcopy(task.model)
    pruner = tp.pruner.MetaPruner(
        model,
        task.example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=amount,
        global_pruning=global_pruning,
        ignored_layers=[_output_layer(model)],
    )
    pruner.step()
    if task.fine_tune is not None and fine_tune_steps > 0:
        task.fine_tune(model, fine_tune_steps)
    return model.eval()


def _score(task: ap.Task, model: nn.Module, reference: nn.Module, budget_s: float, target: str) -> dict[str, float]:
    assert task.test is not None, "the benchmark reports test accuracy: the task needs a test split"
    with torch.inference_mode():
        test = float(task.test(model))
    # Paired with the unpruned model; a measurement a loaded machine scattered (interval wider
    # than +-10%) is taken again with more time, up to 4x the budget, as the search does.
    meter = ap.SpeedupMeter(reference, task.example_inputs, target)
    sp = cached_speedup(meter, model, None, budget_s=budget_s, max_budget_s=4 * budget_s)
    return {"test": test, "speedup": sp.ratio, "speedup_low": sp.low, "speedup_high": sp.high,
            "converged": float(sp.converged)}


def _hypervolume(points: list[dict[str, float]], base_test: float, hv_drop: float) -> float:
    """Area dominated in (test drop in points, latency fraction = 1/speedup), both minimised,
    up to (hv_drop, 1) (Optuna's hypervolume through ``autoprune.report.hypervolume``)."""
    pts = [(base_test - p["test"], 1.0 / p["speedup"]) for p in points]
    pts = [(d, lat) for d, lat in pts if d < hv_drop and lat < 1.0]
    return float(hypervolume(pts, [hv_drop, 1.0])) if pts else 0.0


def _summary(points: list[dict[str, float]], base_test: float, args: argparse.Namespace) -> dict[str, float]:
    def best(drop: float) -> float:
        ok = [p["speedup"] for p in points if base_test - p["test"] <= drop]
        return max(ok) if ok else math.nan

    return {
        "best_speedup": best(args.max_drop),
        "best_speedup_1pt": best(1.0),
        "best_speedup_2pt": best(2.0),
        "hypervolume": _hypervolume(points, base_test, args.hv_drop),
        # the region the search is asked to cover: its default constraint, 1 point of drop
        "hypervolume_1pt": _hypervolume(points, base_test, 1.0),
        "points": len(points),
    }


def parse_task(text: str) -> tuple[str, dict[str, Any]]:
    """``"shapes-resnet"`` or ``"shapes-resnet[width=32,blocks=2]"``: a built-in task and its options."""
    name, _, rest = text.partition("[")
    options: dict[str, Any] = {}
    if rest:
        if not rest.endswith("]"):
            raise SystemExit(f"bad --tasks entry {text!r}: expected NAME or NAME[key=value,...]")
        for item in filter(None, rest[:-1].split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise SystemExit(f"bad task option {item!r} in {text!r}: expected key=value")
            try:
                options[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                options[key.strip()] = value
    return name, options


def run_search_method(task_name: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    name_only, options = parse_task(task_name)
    task = ap.tasks.get(name_only, **options)
    storage = f"sqlite:///{workdir}/bench.db"
    name = "-".join([name_only.replace(":", "."), *(f"{k}{v}" for k, v in options.items()), str(seed)])
    t0 = time.perf_counter()
    space = ap.SpaceConfig(parametrization=args.parametrization, fine_tune_steps=[args.fine_tune])
    study = ap.search(task, objectives=["accuracy", "latency"], n_trials=args.trials, storage=storage,
                      study_name=name, seed=seed, target=args.target, report=False, latency_cache="study",
                      latency_budget_s=args.search_budget, space=dataclasses.asdict(space),
                      front_tolerance=args.front_tolerance, drop_noise_se=args.drop_noise_se,
                      screen_window=args.screen_window, sensitivity_resource=args.sensitivity_resource,
                      global_reference_amounts=list(args.global_references), neighbour_share=args.neighbour_share)
    minutes = (time.perf_counter() - t0) / 60
    spent = sum(int(t.user_attrs.get("fine_tune_steps_spent", 0)) for t in study.trials)
    # What the user is shown and picks from: the study's front (feasible, full-fidelity trials
    # that no other beats by front_tolerance points of validation accuracy or more).
    front = [t for t in ap.load_study(name, storage).pareto_trials() if "speedup" in t.user_attrs]
    searched = [t for t in study.trials if t.user_attrs.get("role") == "search"]
    trials = {
        "full": sum(t.user_attrs.get("fidelity") == "full" for t in searched),
        "screened_out": sum(t.user_attrs.get("fidelity") == "screen" for t in searched),
        "repeats": sum(t.user_attrs.get("fidelity") == "repeat" for t in searched),
        "not_screened": sum("screen_skipped" in t.user_attrs for t in searched),
        "neighbours_full": sum("neighbour_of" in t.user_attrs and t.user_attrs.get("fidelity") == "full" for t in searched),
        "references": sum(t.user_attrs.get("role", "search") != "search" for t in study.trials),
    }
    print(f"{name}: search trials {trials} in {minutes:.1f} min, {spent} fine-tune steps", flush=True)
    return {"study": study, "front": front, "minutes": minutes, "fine_tune_steps": spent, "task": task, "trials": trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["shapes-resnet", "digits"],
                        help="tasks, each NAME or NAME[key=value,...] (e.g. 'shapes-resnet[width=32]'); NAME: built-in, or "
                             "'package.module:factory' (e.g. 'scripts.bench_tasks:signals', a task autoprune was not tuned on)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--max-drop", type=float, default=0.5, help="points of test-accuracy drop allowed")
    parser.add_argument("--hv-drop", type=float, default=5.0, help="hypervolume reference: drop in points")
    parser.add_argument("--target", default="cpu:batch=32", help="latency target of the search and of every re-timing")
    parser.add_argument("--budget", type=float, default=6.0, help="seconds per paired speedup measurement")
    parser.add_argument("--fine-tune", type=int, default=100,
                        help="fine-tune steps of every hand point and of every full-fidelity search trial")
    parser.add_argument("--parametrization", choices=["unit", "sensitivity"], default="unit",
                        help="the search space's parametrization (space.parametrization)")
    parser.add_argument("--search-budget", type=float, default=2.0,
                        help="seconds per paired speedup measurement inside the search (latency_budget_s)")
    parser.add_argument("--front-tolerance", type=float, default=ap.SearchConfig().front_tolerance,
                        help="the search's front_tolerance: points of validation accuracy the front does not tell apart")
    parser.add_argument("--sensitivity-resource", choices=["latency", "macs"],
                        default=ap.SearchConfig().sensitivity_resource,
                        help="the search's sensitivity_resource: what the warm starts spread pruning by")
    parser.add_argument("--global-references", type=float, nargs="*",
                        default=ap.SearchConfig().global_reference_amounts,
                        help="the search's global_reference_amounts (none given: no global references)")
    parser.add_argument("--neighbour-share", type=float, default=ap.SearchConfig().neighbour_share,
                        help="the search's neighbour_share: share of the search trials spent around the fastest feasible one")
    parser.add_argument("--screen-window", type=int, default=ap.SearchConfig().screen_window,
                        help="the search's screen_window: screen only while it pays over this many trials (0: always)")
    parser.add_argument("--drop-noise-se", type=float, default=ap.SearchConfig().drop_noise_se,
                        help="the search's drop_noise_se: standard errors of validation noise the accuracy constraint allows")
    parser.add_argument("--uniform", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    parser.add_argument("--global-amounts", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench-search-"))
    rows: list[dict[str, Any]] = []
    for task_name in args.tasks:
        for seed in args.seeds:
            torch.manual_seed(seed)
            found = run_search_method(task_name, seed, args, workdir)
            task: ap.Task = found["task"]
            reference = task.fresh_model().eval()
            assert task.test is not None
            base_test = float(task.test(reference))
            budget = args.fine_tune
            points: dict[str, list[dict[str, float]]] = {"autoprune": [], "uniform sweep": [], "global sweep": []}
            t_reapply = time.perf_counter()
            for t in found["front"]:
                schedule = ap.Schedule.from_json(t.user_attrs["schedule"])
                pruned = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs,
                                           fine_tune=task.fine_tune)
                points["autoprune"].append({**_score(task, pruned, reference, args.budget, args.target), "trial": t.number,
                                            "recorded_speedup": float(t.user_attrs["speedup"]),
                                            "val_drop": float(t.user_attrs["accuracy_drop"]),
                                            "role": t.user_attrs.get("role"), "neighbour_of": t.user_attrs.get("neighbour_of"),
                                            "val_drop_se": float(t.user_attrs.get("accuracy_drop_se", math.nan))})
            reapply_min = (time.perf_counter() - t_reapply) / 60
            t_sweeps = time.perf_counter()
            for amount in args.uniform:
                m = hand_pruned(task, amount, global_pruning=False, fine_tune_steps=budget)
                points["uniform sweep"].append({**_score(task, m, reference, args.budget, args.target), "amount": amount})
            for amount in args.global_amounts:
                m = hand_pruned(task, amount, global_pruning=True, fine_tune_steps=budget)
                points["global sweep"].append({**_score(task, m, reference, args.budget, args.target), "amount": amount})
            sweep_min = (time.perf_counter() - t_sweeps) / 60
            steps = {
                "autoprune": found["fine_tune_steps"],
                "uniform sweep": budget * len(args.uniform),
                "global sweep": budget * len(args.global_amounts),
            }
            for method, pts in points.items():
                row = {"task": task_name, "seed": seed, "method": method, "base_test": base_test,
                       **_summary(pts, base_test, args), "fine_tune_steps": steps[method],
                       "minutes": found["minutes"] if method == "autoprune" else sweep_min / 2, "raw": pts}
                if method == "autoprune":
                    row["trials"] = found["trials"]
                rows.append(row)
                print(f"{task_name} seed {seed} {method}: best {row['best_speedup']:.2f}x at <= {args.max_drop} pt, "
                      f"{row['best_speedup_1pt']:.2f}x at <= 1, {row['best_speedup_2pt']:.2f}x at <= 2, "
                      f"HV(1 pt) {row['hypervolume_1pt']:.3f}, HV {row['hypervolume']:.3f}, {row['fine_tune_steps']} fine-tune steps", flush=True)
            print(f"  (re-applying autoprune's front took {reapply_min:.1f} min, the sweeps {sweep_min:.1f} min)")
            write_result(args.out / "bench_search.json", rows, table="", meta=run_meta())  # so far: rows, no table

    lines = [f"| task | method | best speedup at <= {args.max_drop:.1f} pt test drop | at <= 1 pt | at <= 2 pt "
             f"| hypervolume ({args.hv_drop:g} pt) | hypervolume (1 pt) | fine-tune steps | points | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task_name in args.tasks:
        for method in ("autoprune", "uniform sweep", "global sweep"):
            sel = [r for r in rows if r["task"] == task_name and r["method"] == method]

            def med(key: str, sel: list[dict[str, Any]] = sel) -> float:
                vals = [float(r[key]) for r in sel if not math.isnan(float(r[key]))]
                return statistics.median(vals) if vals else math.nan

            lines.append(f"| {task_name} | {method} | {med('best_speedup'):.2f}x | {med('best_speedup_1pt'):.2f}x | "
                         f"{med('best_speedup_2pt'):.2f}x | {med('hypervolume'):.3f} | {med('hypervolume_1pt'):.3f} | "
                         f"{med('fine_tune_steps'):.0f} | {med('points'):.0f} | {med('minutes'):.1f} |")
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\nmedians over seeds {args.seeds}; speedups timed in alternation with the unpruned model at {args.target}; "
          f"test split; hypervolume reference ({args.hv_drop} points, 1.0)")
    print(f"reproduce: python scripts/bench_search.py --tasks {' '.join(args.tasks)} --seeds "
          f"{' '.join(map(str, args.seeds))} --trials {args.trials} --target '{args.target}' --budget {args.budget} "
          f"--fine-tune {args.fine_tune} --parametrization {args.parametrization} --front-tolerance {args.front_tolerance} "
          f"--drop-noise-se {args.drop_noise_se} --screen-window {args.screen_window} "
          f"--sensitivity-resource {args.sensitivity_resource} "
          f"--global-references {' '.join(str(a) for a in args.global_references)} --neighbour-share {args.neighbour_share}")
    write_result(args.out / "bench_search.json", rows, table=table, meta=run_meta())
    (args.out / "bench_search.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
