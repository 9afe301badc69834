"""Benchmark (the acceptance measure): autoprune's search against the two hand sweeps.

For each task and seed, in ONE run:
  - autoprune: ``ap.search`` with its defaults (accuracy and latency, ``--trials`` trials);
    every trial on the study's front (``pareto_trials()``: feasible, full-fidelity trials that
    no other beats by ``front_tolerance`` points of validation accuracy or more) and the trials
    ``ap.load_study(...).pick(max_accuracy_drop=X)`` chooses are re-applied from their stored
    JSON and fine-tuned as their schedule says;
  - uniform sweep: what a person writes by hand with Torch-Pruning: MetaPruner with L2
    magnitude importance, the same ratio for every layer (20..90%), the output layer ignored;
  - global sweep: the same with ``global_pruning=True`` (20..80%);
  - both sweeps again at EQUAL BUDGET ("... (equal budget)"): each point fine-tuned with an
    equal share of the fine-tune steps the search spent on that task and seed.
A default-budget hand point gets as many fine-tune steps as one full-fidelity search trial.
Every point is scored on the task's validation split (what a user chooses with) and TEST split
(what is reported; the search never saw it), and timed in alternation with the unpruned model
(``ap.measure_speedup``'s meter: ABBA rounds, median of per-round ratios with a 95% interval;
measured again with more time when a loaded machine scattered it), so machine drift cancels.
An equal-budget point has the same architecture as the default-budget point of its ratio
(checked), so it reuses that point's timing.

Reported per method (median over seeds), for X = 0.5 and 1 point:
  - VALIDATION-PICKED (what a user gets): autoprune's ``pick(max_accuracy_drop=X)`` (fastest
    feasible trial within X points of validation drop, as the search recorded it); a sweep's
    fastest point within X points of validation drop (none: the unpruned model, 1.00x);
    that point's TEST drop and its speedup re-measured here;
  - test-selected (NOT a user's choice, an upper bound that favours more candidates): the
    fastest point whose test drop is within X;
  - hypervolume of (test drop in points, latency / unpruned latency) against (--hv-drop, 1.0)
    and against (1 point, 1.0) (scores a whole front, not a choice);
  - compute: fine-tune steps and minutes (wall clock on this machine) per method.
Development tasks (autoprune's defaults were tuned on them: the built-in tasks and
``scripts.bench_tasks:signals``) and held-out tasks (``scripts.bench_tasks:tabular`` and
``:textures``, frozen: never tuned on) are reported in separate tables.

Reproduce:  python scripts/bench_search.py --tasks digits 'scripts.bench_tasks:tabular' \
                'scripts.bench_tasks:textures' --seeds 0 1 2 --trials 24 --target 'cpu:threads=1,batch=32' --budget 3
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


def _score(task: ap.Task, model: nn.Module, reference: nn.Module, budget_s: float, target: str,
           *, timed: dict[str, float] | None = None) -> dict[str, float]:
    """Validation and test score of ``model``, and its speedup over ``reference`` timed in
    alternation (or ``timed``: the timing of the same architecture, measured before)."""
    assert task.test is not None, "the benchmark reports test accuracy: the task needs a test split"
    with torch.inference_mode():
        val = float(task.evaluate(model))
        test = float(task.test(model))
    if timed is None:
        # Paired with the unpruned model; a measurement a loaded machine scattered (interval wider
        # than +-10%) is taken again with more time, up to 4x the budget, as the search does.
        meter = ap.SpeedupMeter(reference, task.example_inputs, target)
        sp = cached_speedup(meter, model, None, budget_s=budget_s, max_budget_s=4 * budget_s)
        timed = {"speedup": sp.ratio, "speedup_low": sp.low, "speedup_high": sp.high, "converged": float(sp.converged)}
    return {"val": val, "test": test, **timed}


def _architecture(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(p.shape)) for name, p in model.state_dict().items()]


def _hypervolume(points: list[dict[str, float]], base_test: float, hv_drop: float) -> float:
    """Area dominated in (test drop in points, latency fraction = 1/speedup), both minimised,
    up to (hv_drop, 1) (Optuna's hypervolume through ``autoprune.report.hypervolume``)."""
    pts = [(base_test - p["test"], 1.0 / p["speedup"]) for p in points]
    pts = [(d, lat) for d, lat in pts if d < hv_drop and lat < 1.0]
    return float(hypervolume(pts, [hv_drop, 1.0])) if pts else 0.0


def _drop_key(drop: float) -> str:
    return f"{drop:g}".replace(".", "_")


UNPRUNED_POINT = {"speedup": 1.0, "speedup_low": 1.0, "speedup_high": 1.0, "unpruned": 1.0}


def sweep_pick(points: list[dict[str, float]], base_val: float, base_test: float, drop: float) -> dict[str, float]:
    """What a user takes from a sweep: its fastest point (by the speedup measured here) within
    ``drop`` points of validation drop; none: the unpruned model (1.00x, no drop)."""
    ok = [p for p in points if base_val - p["val"] <= drop]
    if not ok:
        return {**UNPRUNED_POINT, "val": base_val, "test": base_test}
    return max(ok, key=lambda p: (p["speedup"], p["val"]))


def _summary(points: list[dict[str, float]], picked: dict[float, dict[str, float]], base_val: float,
             base_test: float, args: argparse.Namespace) -> dict[str, float]:
    def best_on_test(drop: float) -> float:
        ok = [p["speedup"] for p in points if base_test - p["test"] <= drop]
        return max(ok, default=1.0)  # none: the unpruned model

    out: dict[str, float] = {}
    for drop, p in picked.items():
        k = _drop_key(drop)
        out |= {f"picked_{k}_test_drop": base_test - p["test"], f"picked_{k}_val_drop": base_val - p["val"],
                f"picked_{k}_speedup": p["speedup"], f"picked_{k}_speedup_low": p["speedup_low"],
                f"picked_{k}_speedup_high": p["speedup_high"], f"picked_{k}_unpruned": float(p.get("unpruned", 0.0)),
                f"test_best_{k}_speedup": best_on_test(drop)}
    return out | {
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
    return {"study": study, "front": front, "minutes": minutes, "fine_tune_steps": spent, "task": task, "trials": trials,
            "name": name, "storage": storage}


DROPS = (0.5, 1.0)  # X: points of validation drop a user allows when picking
METHODS = ("autoprune", "uniform sweep", "global sweep", "uniform sweep (equal budget)", "global sweep (equal budget)")
HELD_OUT = ("scripts.bench_tasks:tabular", "scripts.bench_tasks:textures")  # frozen; see scripts/bench_tasks.py


def task_group(task_name: str) -> str:
    """``held-out`` for the frozen tasks of scripts/bench_tasks.py, ``development`` for the rest
    (the built-in tasks and scripts.bench_tasks:signals: defaults were tuned on them)."""
    return "held-out" if parse_task(task_name)[0] in HELD_OUT else "development"


def autoprune_picks(found: dict[str, Any], storage_points: dict[int, dict[str, float]], task: ap.Task,
                    reference: nn.Module, args: argparse.Namespace) -> dict[float, dict[str, float]]:
    """``pick(max_accuracy_drop=X)`` for each X, on validation as the search recorded it; the
    picked trial re-applied and scored here (front points are scored already)."""
    results = ap.load_study(found["name"], found["storage"])
    picked: dict[float, dict[str, float]] = {}
    for drop in DROPS:
        try:
            pick = results.pick(max_accuracy_drop=drop, minimize="latency")
        except ap.NoQualifyingTrialError as exc:  # not even the unpruned trial: keep the unpruned model
            print(f"  autoprune pick within {drop} pt: {exc}; the unpruned model", flush=True)
            base_val = float(task.evaluate(reference))
            picked[drop] = {**UNPRUNED_POINT, "val": base_val, "test": float(task.test(reference))}  # type: ignore[misc]
            continue
        if pick.number not in storage_points:
            pruned = ap.apply_schedule(task.model, pick.schedule, example_inputs=task.example_inputs,
                                       fine_tune=task.fine_tune)
            storage_points[pick.number] = {**_score(task, pruned, reference, args.budget, args.target),
                                           "trial": pick.number, "on_front": 0.0}
        picked[drop] = {**storage_points[pick.number], "recorded_val_drop": float(pick.metrics["accuracy_drop"]),
                        "recorded_speedup": float(pick.metrics.get("speedup", math.nan)), "rule": pick.rule,
                        "role": pick.role}  # type: ignore[dict-item]
    return picked


def sweep(task: ap.Task, reference: nn.Module, amounts: list[float], *, global_pruning: bool, steps: int,
          args: argparse.Namespace, timed: list[dict[str, float]] | None = None) -> tuple[list[dict[str, float]], float]:
    """A hand sweep's points (``timed``: the same ratios' points measured before, whose timing
    the same architecture reuses) and its minutes."""
    t0 = time.perf_counter()
    points = []
    for i, amount in enumerate(amounts):
        m = hand_pruned(task, amount, global_pruning=global_pruning, fine_tune_steps=steps)
        reuse = None
        if timed is not None:
            before = timed[i]
            if before["architecture"] != _architecture(m):
                raise SystemExit(f"the {amount:.0%} sweep point's architecture changed with the fine-tune budget")
            reuse = {k: before[k] for k in ("speedup", "speedup_low", "speedup_high", "converged")}
        points.append({**_score(task, m, reference, args.budget, args.target, timed=reuse), "amount": amount,
                       "architecture": _architecture(m)})  # type: ignore[dict-item]
    return points, (time.perf_counter() - t0) / 60


def _median(rows: list[dict[str, Any]], key: str) -> float:
    vals = [float(r[key]) for r in rows if key in r and not math.isnan(float(r[key]))]
    return statistics.median(vals) if vals else math.nan


def tables(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """One Markdown table per task group (development, held-out): medians over seeds."""
    head = ["task", "method"]
    for drop in DROPS:
        head += [f"val-picked <= {drop:g} pt: test drop", "speedup [95% interval]", "test drop > X (seeds)"]
    head += [f"test-selected best <= {d:g} pt (not a user's choice)" for d in DROPS]
    head += [f"hypervolume ({args.hv_drop:g} pt)", "hypervolume (1 pt)", "fine-tune steps", "minutes", "points"]
    out: list[str] = []
    for group in ("development", "held-out"):
        names = [t for t in args.tasks if task_group(t) == group]
        if not names:
            continue
        title = ("DEVELOPMENT tasks (autoprune's defaults were tuned on them)" if group == "development" else
                 "HELD-OUT tasks (frozen: no default was chosen from them)")
        out += [f"**{title}**, medians over seeds {' '.join(map(str, args.seeds))}", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for task_name in names:
            for method in METHODS:
                sel = [r for r in rows if r["task"] == task_name and r["method"] == method]
                if not sel:
                    continue
                cells = [task_name.removeprefix("scripts.bench_tasks:"), method]
                for drop in DROPS:
                    k = _drop_key(drop)
                    over = sum(float(r[f"picked_{k}_test_drop"]) > drop for r in sel)
                    unpruned = sum(float(r[f"picked_{k}_unpruned"]) > 0 for r in sel)
                    cells += [f"{_median(sel, f'picked_{k}_test_drop'):.2f}",
                              f"{_median(sel, f'picked_{k}_speedup'):.2f}x [{_median(sel, f'picked_{k}_speedup_low'):.2f}, "
                              f"{_median(sel, f'picked_{k}_speedup_high'):.2f}]" + (f" ({unpruned} unpruned)" if unpruned else ""),
                              f"{over}/{len(sel)}"]
                cells += [f"{_median(sel, f'test_best_{_drop_key(d)}_speedup'):.2f}x" for d in DROPS]
                cells += [f"{_median(sel, 'hypervolume'):.3f}", f"{_median(sel, 'hypervolume_1pt'):.3f}",
                          f"{_median(sel, 'fine_tune_steps'):.0f}", f"{_median(sel, 'minutes'):.1f}",
                          f"{_median(sel, 'points'):.0f}"]
                out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append(f"Test drop in points of the task's test split; speedup: median of per-seed ratios, timed in alternation "
               f"with the unpruned model at {args.target} ({args.budget:g} s, up to 4x when scattered), the interval the "
               f"medians of the per-seed 95% intervals. Val-picked: autoprune's pick(max_accuracy_drop=X); a sweep's fastest "
               f"point within X on validation (none: the unpruned model). 'test drop > X': seeds whose picked point lost "
               f"more than X on test. Equal budget: each sweep point fine-tuned with its share of the search's steps. "
               f"Minutes: wall clock of the search (autoprune) or of pruning, fine-tuning and scoring a sweep (an equal-budget "
               f"sweep reuses the default sweep's timings, so its minutes leave timing out).")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["shapes-resnet", "digits"],
                        help="tasks, each NAME or NAME[key=value,...] (e.g. 'shapes-resnet[width=32]'); NAME: built-in, or "
                             "'package.module:factory' (e.g. 'scripts.bench_tasks:tabular', a held-out task; "
                             "'scripts.bench_tasks:signals' is a development task: defaults were tuned on it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=40)
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
                        help="the search's sensitivity_resource: what the sensitivity references spread pruning by")
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
            with torch.inference_mode():
                base_val = float(task.evaluate(reference))
                base_test = float(task.test(reference))
            t_reapply = time.perf_counter()
            scored: dict[int, dict[str, float]] = {}  # trial number -> its point, scored here
            for t in found["front"]:
                schedule = ap.Schedule.from_json(t.user_attrs["schedule"])
                pruned = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs,
                                           fine_tune=task.fine_tune)
                scored[t.number] = {**_score(task, pruned, reference, args.budget, args.target), "trial": t.number,
                                    "on_front": 1.0, "recorded_speedup": float(t.user_attrs["speedup"]),
                                    "recorded_val_drop": float(t.user_attrs["accuracy_drop"]),
                                    "role": t.user_attrs.get("role"), "neighbour_of": t.user_attrs.get("neighbour_of"),
                                    "val_drop_se": float(t.user_attrs.get("accuracy_drop_se", math.nan))}
            front_points = list(scored.values())
            picks: dict[str, dict[float, dict[str, float]]] = {
                "autoprune": autoprune_picks(found, scored, task, reference, args)}
            reapply_min = (time.perf_counter() - t_reapply) / 60
            points: dict[str, list[dict[str, Any]]] = {"autoprune": front_points}
            minutes = {"autoprune": found["minutes"]}
            steps = {"autoprune": found["fine_tune_steps"]}
            for method, amounts, global_pruning in (("uniform sweep", args.uniform, False),
                                                     ("global sweep", args.global_amounts, True)):
                points[method], minutes[method] = sweep(task, reference, amounts, global_pruning=global_pruning,
                                                        steps=args.fine_tune, args=args)
                steps[method] = args.fine_tune * len(amounts)
                # Equal budget: the search's fine-tune steps shared among the sweep's points.
                share = found["fine_tune_steps"] // len(amounts)
                equal = f"{method} (equal budget)"
                points[equal], minutes[equal] = sweep(task, reference, amounts, global_pruning=global_pruning,
                                                      steps=share, args=args, timed=points[method])
                steps[equal] = share * len(amounts)
            for method in METHODS:
                pts = points[method]
                if method != "autoprune":
                    picks[method] = {d: sweep_pick(pts, base_val, base_test, d) for d in DROPS}
                    for p in pts:
                        p.pop("architecture", None)
                row = {"task": task_name, "group": task_group(task_name), "seed": seed, "method": method,
                       "base_val": base_val, "base_test": base_test,
                       **_summary(pts, picks[method], base_val, base_test, args),
                       "fine_tune_steps": steps[method], "minutes": minutes[method], "raw": pts,
                       "picked": {f"{d:g}": picks[method][d] for d in DROPS}}
                if method == "autoprune":
                    row["trials"] = found["trials"]
                    row["reapply_minutes"] = reapply_min
                rows.append(row)
                print(f"{task_name} seed {seed} {method}: val-picked <= 0.5 pt: test drop {row['picked_0_5_test_drop']:.2f}, "
                      f"{row['picked_0_5_speedup']:.2f}x; <= 1 pt: test drop {row['picked_1_test_drop']:.2f}, "
                      f"{row['picked_1_speedup']:.2f}x; test-selected {row['test_best_0_5_speedup']:.2f}x / "
                      f"{row['test_best_1_speedup']:.2f}x; HV(1 pt) {row['hypervolume_1pt']:.3f}, HV {row['hypervolume']:.3f}, "
                      f"{row['fine_tune_steps']} fine-tune steps, {row['minutes']:.1f} min", flush=True)
            print(f"  (re-applying autoprune's front and picks took {reapply_min:.1f} min)", flush=True)
            write_result(args.out / "bench_search.json", rows, table="", meta=run_meta())  # so far: rows, no table

    table = tables(rows, args)
    print()
    print(table)
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
