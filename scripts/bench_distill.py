"""Does distillation from the unpruned model recover accuracy after structured pruning?

On the built-in ``shapes-resnet`` task, every structured unit is pruned by the same amount
(``ap.uniform_schedule``, one shot), then fine-tuned for the same number of steps either with
the task's plain ``fine_tune`` or with its ``distill_fine_tune`` (cross-entropy plus
``1.0 * T**2 * KL`` to the unpruned model's outputs at temperature ``T = 4``). Accuracy is on
the held-out test split; each row is repeated with three fine-tune seeds (the order of the
training batches), on the same trained model.

Usage:
    python scripts/bench_distill.py --seeds 0 1 2 --amounts 0.5 0.75 --steps 100 --out results/bench_distill.json

It also prints the unpruned model's accuracy and, with ``--fresh``, how long the model took
to train (a new, empty cache folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _results import run_meta, write_result

import autoprune as ap


def prune_and_tune(task: ap.Task, amount: float, steps: int, distill: bool) -> float:
    """Test accuracy of the task's model pruned uniformly by ``amount`` and fine-tuned ``steps`` steps."""
    schedule = ap.uniform_schedule(task.model, task.example_inputs, amount=amount, fine_tune_steps=steps)
    tune = task.distill_fine_tune if distill else task.fine_tune
    pruned = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs, fine_tune=tune)
    return task.test(pruned)  # type: ignore[misc]


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):6.2f} ± {sd:4.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="shapes-resnet", help="a built-in task with distill_fine_tune")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tune seeds")
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.5, 0.75], help="uniform structured amounts")
    parser.add_argument("--steps", type=int, nargs="+", default=[100], help="fine-tune steps (the same for both)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--fresh", action="store_true", help="train the model in a new cache folder and time it")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fresh:
        os.environ["AUTOPRUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="autoprune-bench-distill-")
    started = time.perf_counter()
    base_task = ap.tasks.get(args.task)
    build_s = time.perf_counter() - started
    base_val, base_test = base_task.evaluate(base_task.model), base_task.test(base_task.model)  # type: ignore[misc]
    what = "trained and built" if args.fresh else "built (model from the cache, if there)"
    print(f"{args.task}: {what} in {build_s:.1f} s with {torch.get_num_threads()} torch thread(s)")
    print(f"unpruned: validation {base_val:.2f}%, test {base_test:.2f}%")

    rows: list[dict[str, Any]] = []
    for amount in args.amounts:
        for steps in args.steps:
            scores: dict[str, list[float]] = {"plain": [], "distill": []}
            for seed in args.seeds:
                task = ap.tasks.get(args.task, fine_tune_seed=seed)
                for mode in scores:
                    scores[mode].append(prune_and_tune(task, amount, steps, distill=mode == "distill"))
            gain = [d - p for p, d in zip(scores["plain"], scores["distill"], strict=True)]
            rows.append({"amount": amount, "steps": steps, **scores, "gain": gain})
            print(
                f"  amount {amount:.2f} steps {steps}: plain {_mean_sd(scores['plain'])}, "
                f"distill {_mean_sd(scores['distill'])}",
                flush=True,
            )

    print()
    print(f"Test accuracy (%) after uniform structured pruning; unpruned test {base_test:.2f}%; seeds {args.seeds}")
    lines = ["| amount | fine-tune steps | plain fine-tune | with distillation | distillation gain (points) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        lines.append(
            f"| {row['amount']:.0%} | {row['steps']} | {_mean_sd(row['plain'])} | {_mean_sd(row['distill'])} "
            f"| {_mean_sd(row['gain'])} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {**run_meta(argv), "task": args.task, "build_s": build_s, "fresh": args.fresh}
        write_result(args.out, rows, table=table, meta=meta, unpruned={"val": base_val, "test": base_test})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
