"""A speedup measured on a loaded machine: one measurement against the search's re-measuring.

The search times every trial against the unpruned model (``SpeedupMeter.measure``). On a
machine loaded enough that a batch takes tens of times longer (other processes running
multi-threaded torch on the same cores), a budget of a few seconds fits only a few rounds,
and the ratio scatters. The search then measures again, with twice the time and twice that,
up to 4x the budget (``cached_speedup(..., max_budget_s=)``), and keeps the narrowest.

This script loads the machine with ``--disturbers`` processes, each training a small CNN on
``--disturber-threads`` threads without pause (as the test suite or another search does), and
measures, ``--repeats`` times each, in
alternation:
  - ``single``: one measurement of ``--budget`` seconds (what the search did before);
  - ``re-measured``: the same, re-measured while wider than +-10%, up to 4x the budget;
for two pairs whose true ratio is known or measured quietly first: the digits model against
itself (1.0) and uniform 50% structured against the digits model. It prints, per pair and
method, the median ratio, the spread of the ratios (min..max), the median interval
half-width, and the seconds per measurement.

What it showed here (2 cores, 2026-11-26): with 2 or 4 such disturbers the paired ratio stays
within 4% of the quiet one, intervals end within +-6%, and nothing is re-measured: the
re-measuring costs nothing under ordinary load. The scatter it guards against (calls 20 to 50
times slower, 3 to 8 rounds, intervals from 0.1x to 20x) was seen in a search run beside the
whole test suite (large zoo models, the kernel's swap daemon busy); these disturbers do not
reproduce it.

Reproduce:  python scripts/bench_loaded.py                      (2 disturbers, 10 repeats)
            python scripts/bench_loaded.py --disturbers 0        (quiet: nothing is re-measured)
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import statistics
import time
from typing import Any

import torch

import autoprune as ap
from autoprune.evaluation import cached_speedup


def _disturb(threads: int, stop: Any) -> None:
    """What the test suite or another search does: train a small CNN, many short parallel ops."""
    torch.set_num_threads(threads)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(32 * 16 * 16, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,))
    while not stop.is_set():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--disturbers", type=int, default=2, help="processes loading the machine")
    parser.add_argument("--disturber-threads", type=int, default=2, help="torch threads of each disturber")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of one measurement (latency_budget_s)")
    parser.add_argument("--target", default="cpu:batch=32", help="the measurement's target (all cores by default)")
    args = parser.parse_args()

    task = ap.tasks.get("digits")
    model = task.model.eval()
    pruned = ap.apply_schedule(model, ap.uniform_schedule(task.model, task.example_inputs, amount=0.5),
                               example_inputs=task.example_inputs)
    meter = ap.SpeedupMeter(model, task.example_inputs, args.target)
    quiet = cached_speedup(meter, pruned, None, budget_s=4 * args.budget, max_budget_s=16 * args.budget)
    pairs = {"unpruned vs itself": (copy.deepcopy(model), 1.0), "uniform 50% vs unpruned": (pruned, quiet.ratio)}
    print(f"quiet: uniform 50% is {quiet.ratio:.3f}x [{quiet.low:.3f}, {quiet.high:.3f}] at {args.target}")

    stop = mp.Event()
    procs = [mp.Process(target=_disturb, args=(args.disturber_threads, stop), daemon=True)
             for _ in range(args.disturbers)]
    for p in procs:
        p.start()
    time.sleep(2.0 if procs else 0.0)
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        for _ in range(args.repeats):
            for name, (candidate, _) in pairs.items():
                for method, limit in (("single", None), ("re-measured", 4 * args.budget)):
                    t0 = time.perf_counter()
                    s = cached_speedup(meter, candidate, None, budget_s=args.budget, max_budget_s=limit)
                    results.setdefault((name, method), []).append(
                        (s.ratio, s.rel_halfwidth, time.perf_counter() - t0))
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=10)

    print(f"\n{args.disturbers} disturbers x {args.disturber_threads} threads; {args.repeats} measurements each; "
          f"budget {args.budget} s; target {args.target}\n")
    print("| pair | true ratio | method | median ratio | min..max | median half-width | worst error | s / measurement |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for (name, method), rows in results.items():
        ratios = [r for r, _, _ in rows]
        truth = pairs[name][1]
        worst = max(abs(r / truth - 1) for r in ratios)
        print(f"| {name} | {truth:.3f} | {method} | {statistics.median(ratios):.3f} | {min(ratios):.3f}..{max(ratios):.3f} "
              f"| ±{100 * statistics.median(h for _, h, _ in rows):.1f}% | {100 * worst:.0f}% "
              f"| {statistics.median(t for _, _, t in rows):.1f} |")
    print(f"\nreproduce: python scripts/bench_loaded.py --disturbers {args.disturbers} --disturber-threads "
          f"{args.disturber_threads} --repeats {args.repeats} --budget {args.budget} --target '{args.target}'")


if __name__ == "__main__":
    main()
