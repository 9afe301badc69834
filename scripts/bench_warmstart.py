"""Does a sensitivity reference beat the uniform reference at the same MACs?

For each MACs-reduction target: the uniform structured schedule (the smallest amount on the
space's grid that reaches the target), and the sensitivity allocation
(``autoprune.sensitivity.allocate`` with MACs counted for real) at the MACs reduction the
uniform one reached; both through the SearchSpace's params (exactly what a study would
enqueue), both fine-tuned with the same standard budget (the space's largest
``fine_tune_steps``, one step), scored on the task's held-out split. Several task seeds.

    PYTHONPATH=$PWD python scripts/bench_warmstart.py --seeds 0 1 2 --targets 0.5 0.7 0.85
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _results import run_meta, write_result
from torch import nn

import autoprune as ap
from autoprune.evaluation import count_macs
from autoprune.sensitivity import allocate, macs_meter, scan_sensitivity
from autoprune.space import SearchSpace


def digits_calibrate(seed: int, batches: int = 8, batch: int = 64) -> Any:
    """Re-estimate BatchNorm statistics on a few training batches (stand-in for Task.calibrate)."""
    from autoprune.tasks._digits import _load_data

    x_train = _load_data(seed)[0]
    gen = torch.Generator().manual_seed(seed)
    chunks = [x_train[torch.randint(0, len(x_train), (batch,), generator=gen)] for _ in range(batches)]

    @torch.no_grad()
    def calibrate(model: nn.Module) -> nn.Module:
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches
        model.train()
        for x in chunks:
            model(x)
        return model.eval()

    return calibrate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7, 0.85])
    p.add_argument("--amounts", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9])
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        task = ap.tasks.get("digits", seed=seed)
        model, x = task.model, task.example_inputs
        space = SearchSpace(ap.prunable_layers(model, x), ap.SpaceConfig())
        # Task.calibrate (tasks branch) once it exists; until then the same on digits' training data
        calibrate = getattr(task, "calibrate", None) or digits_calibrate(seed)
        t0 = time.perf_counter()
        sens = scan_sensitivity(model, x, space, evaluate=task.evaluate, calibrate=calibrate, amounts=args.amounts)
        meter = macs_meter(model, x, space)
        base_macs = count_macs(model, x)
        print(f"seed {seed}: unpruned {sens.baseline_score:.2f}, scan {sens.seconds:.1f} s ({time.perf_counter() - t0:.1f} s)")
        grid = [round(0.05 * i, 2) for i in range(1, 19)]
        for target in args.targets:
            amount = next((a for a in grid if meter({u.key: a for u in space.units}) >= target), grid[-1])
            uniform = space.uniform_params(amount)
            reached = meter({u.key: amount for u in space.units})
            greedy = allocate(sens, reached, measure=meter, step=space.config.amount_step)
            for name, params in (("uniform", uniform), ("sensitivity", space.params_for(greedy))):
                schedule = space.schedule_from_params(params)
                pruned = ap.apply_schedule(model, schedule, example_inputs=x, fine_tune=task.fine_tune)
                rows.append(
                    {
                        "seed": seed,
                        "target": target,
                        "method": name,
                        "macs_removed": round(1 - count_macs(pruned, x) / base_macs, 4),
                        # the scan chose on validation: score on the held-out test split
                        "accuracy": (task.test or task.evaluate)(pruned),
                        "fine_tune_steps": schedule.fine_tune_budget,
                        "amounts": {k.split(":")[0]: v for k, v in params.items() if k.endswith(":amount")},
                    }
                )
                r = rows[-1]
                print(f"  target {target}: {name:11s} macs -{r['macs_removed']:.1%} acc {r['accuracy']:.2f} {r['amounts']}")
    print()
    lines = ["| MACs target | method | MACs removed (median) | accuracy per seed | median accuracy |", "|---|---|---|---|---|"]
    for target in args.targets:
        for name in ("uniform", "sensitivity"):
            sel = [r for r in rows if r["target"] == target and r["method"] == name]
            accs = [r["accuracy"] for r in sel]
            macs = statistics.median(r["macs_removed"] for r in sel)
            lines.append(
                f"| {target:.0%} | {name} | {macs:.1%} | {', '.join(f'{a:.2f}' for a in accs)} | "
                f"{statistics.median(accs):.2f} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.out:
        write_result(Path(args.out), rows, table=table, meta=run_meta())


if __name__ == "__main__":
    main()
