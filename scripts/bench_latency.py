"""Benchmark of the latency measurement: stability, cost, and isolation from a training worker.

For each reference model (``autoprune.testing.models``) it measures latency ``--repeats`` times in three
conditions and reports the median of the medians, the coefficient of variation (CV) of the
repeated measurements (target: <= 5%) and the wall time one measurement costs:

- ``quiet``: nothing else of ours runs.
- ``train, no lock``: a second process trains a CNN on the other core without pausing, and
  the measurements do not take the lock.
- ``train, lock``: the same trainer wraps every step in ``training_gate()`` and the
  measurements take the machine-wide lock, so training pauses while a measurement runs
  (and a measurement waits for the step in progress before it starts).

The trainer's throughput (steps/s) in the two training conditions shows what the pause costs
training. With ``--pin`` (default when the machine has 2+ CPUs), the measuring process is
pinned to the first CPU and the trainer to the second.

Reproduce (the numbers go to ``results/bench_latency.json`` and ``.md``)::

    python scripts/bench_latency.py                      # full run, about 2 minutes
    python scripts/bench_latency.py --budget 0.3 --models cnn resnet   # quick check

Two more benchmarks of the paired speedup (:func:`autoprune.measure_speedup`), each writing
``results/bench_latency_<mode>.json`` and ``.md``:

- ``--drift``: a second process alternates ``--busy`` seconds of work and ``--idle`` seconds of
  rest on one CPU. For each reference model, the speedup of uniform 50% structured pruning
  over the unpruned model is measured ``--repeats`` times paired (``SpeedupMeter.measure``,
  budget ``--budget``) and as many times unpaired (two ``measure_latency`` calls of half that
  budget each, then their ratio); then, with the disturber idle, the quiet paired value.
  Targets: paired CV <= 2% and within 5% of the quiet value.
- ``--efficiency``: for each ``--backends`` entry and model, the paired speedup of uniform 50%
  structured pruning at batch ``--batch`` divided by its MACs reduction (target >= 0.8 on
  the convolutional models).

::

    python scripts/bench_latency.py --drift --repeats 10 --budget 1.0            # about 4 minutes
    python scripts/bench_latency.py --efficiency --batch 32 --backends dense onnxruntime compile
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import shlex
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _results import run_meta, write_result

import autoprune as ap
from autoprune.evaluation import SpeedupMeter, Target, count_macs, default_lock_path, measure_latency, training_gate
from autoprune.testing import models as zoo

IDLE, TRAIN, TRAIN_GATED, STOP = 0, 1, 2, -1


def _trainer(mode: Any, steps: Any, threads: int, cpu: int | None, lock_path: str) -> None:
    """Train a small CNN on random data; mode says whether to train, gate, idle or stop."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(threads)
    model = zoo.PlainCNN(width=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    with steps.get_lock():
        steps.value = -1  # ready: imports and set-up done, nothing left to disturb the quiet runs
    while (m := mode.value) != STOP:
        if m == IDLE:
            time.sleep(0.01)
            continue
        # Gated: wait while a measurement runs, and keep one from starting mid-step.
        with training_gate(lock_path) if m == TRAIN_GATED else contextlib.nullcontext():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        with steps.get_lock():
            steps.value += 1


def _measure(model: torch.nn.Module, x: torch.Tensor, target: Target, args: argparse.Namespace, lock: bool) -> dict:
    medians, costs, spreads = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        r = measure_latency(model, x, target, time_budget_s=args.budget, lock=lock, lock_path=args.lock_path)
        costs.append(time.perf_counter() - start - r.wait_s)
        medians.append(r.median_ms)
        spreads.append(r.spread)
    mean = statistics.fmean(medians)
    return {
        "median_ms": statistics.median(medians),
        "cv": statistics.stdev(medians) / mean if len(medians) > 1 else 0.0,
        "cost_s": statistics.fmean(costs),
        "spread": statistics.median(spreads),
        "medians_ms": medians,
    }


def _run_condition(
    mode: Any, steps: Any, value: int, model: torch.nn.Module, x: torch.Tensor, target: Target, args: argparse.Namespace
) -> tuple[dict, float]:
    """Set the trainer's mode, measure (with the lock unless training ungated); trainer steps/s."""
    mode.value = value
    if value != IDLE:  # let the trainer get going before measuring
        start = steps.value
        deadline = time.time() + 30
        while steps.value < start + 2 and time.time() < deadline:
            time.sleep(0.01)
    t0, s0 = time.perf_counter(), steps.value
    out = _measure(model, x, target, args, lock=value != TRAIN)
    rate = (steps.value - s0) / (time.perf_counter() - t0)
    mode.value = IDLE
    return out, rate


def _disturber(busy_s: float, idle_s: float, cpu: int | None, stop: Any, busy: Any) -> None:
    """Alternate ``busy_s`` seconds of matrix products and ``idle_s`` seconds of sleep on one CPU."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.value:
        busy.value = 1
        end = time.perf_counter() + busy_s
        while time.perf_counter() < end and not stop.value:
            a = torch.tanh(a @ a)
        busy.value = 0
        end = time.perf_counter() + idle_s
        while time.perf_counter() < end and not stop.value:
            time.sleep(0.05)


def _pruned_pair(name: str, batch: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    model, x = zoo.get(name, batch_size=batch)
    schedule = ap.uniform_schedule(model, x, amount=0.5)
    return model, ap.apply_schedule(model, schedule, example_inputs=x).eval(), x


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def _drift(args: argparse.Namespace, target: Target) -> tuple[list[dict], str]:
    ctx = mp.get_context("spawn")
    stop, busy = ctx.Value("i", 0), ctx.Value("i", 0)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    proc = ctx.Process(target=_disturber, args=(args.busy, args.idle, cpus[-1] if cpus else None, stop, busy))
    rows = []
    for name in args.models:
        model, pruned, x = _pruned_pair(name, args.batch)
        meter = SpeedupMeter(model, x, target)
        row: dict[str, Any] = {"model": name}
        if not proc.is_alive():
            proc.start()
        paired = [meter.measure(pruned, budget_s=args.budget, lock_path=args.lock_path) for _ in range(args.repeats)]
        walls = [
            meter.measure(pruned, budget_s=args.budget, lock_path=args.lock_path, clock="wall").ratio
            for _ in range(args.repeats)
        ]
        unpaired = []
        for _ in range(args.repeats):
            ref = measure_latency(model, x, target, time_budget_s=args.budget / 2, lock_path=args.lock_path)
            mod = measure_latency(pruned, x, target, time_budget_s=args.budget / 2, lock_path=args.lock_path)
            unpaired.append(ref.median_ms / mod.median_ms)
        stop.value = 1  # the quiet value: disturber stopped
        proc.join()
        quiet = [meter.measure(pruned, budget_s=args.budget, lock_path=args.lock_path) for _ in range(3)]
        proc = ctx.Process(target=_disturber, args=(args.busy, args.idle, cpus[-1] if cpus else None, stop, busy))
        stop.value = 0
        ratios = [s.ratio for s in paired]
        row.update(
            paired_median=statistics.median(ratios),
            paired_cv=_cv(ratios),
            paired_converged=sum(s.converged for s in paired),
            paired_halfwidth=statistics.median(s.rel_halfwidth for s in paired),
            paired_seconds=statistics.fmean(s.seconds for s in paired),
            clock=paired[0].clock,
            wall_median=statistics.median(walls),
            wall_cv=_cv(walls),
            unpaired_median=statistics.median(unpaired),
            unpaired_cv=_cv(unpaired),
            quiet=statistics.median(s.ratio for s in quiet),
            paired=[s.as_dict() for s in paired],
            unpaired=unpaired,
            paired_wall=walls,
        )
        row["paired_vs_quiet"] = row["paired_median"] / row["quiet"] - 1
        rows.append(row)
        print(f"{name}: done", file=sys.stderr)
    lines = [
        f"Speedup of uniform 50% structured over unpruned on `{target}`, batch {args.batch}; "
        f"disturber {args.busy:g} s busy / {args.idle:g} s idle on one CPU; {args.repeats} measurements "
        f"of {args.budget:g} s each (unpaired: two latencies of {args.budget / 2:g} s). Paired: "
        f"`SpeedupMeter.measure` (clock: {rows[0]['clock'] if rows else '?'}); median ±%: the median "
        "relative half-width of the 95% intervals.",
        "",
        "| model | paired median | paired CV | converged | median ±% | paired, wall clock: median, CV "
        "| unpaired median | unpaired CV | quiet (paired) | paired vs quiet |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['paired_median']:.3f}x | {100 * r['paired_cv']:.1f}% | "
            f"{r['paired_converged']}/{args.repeats} | {100 * r['paired_halfwidth']:.1f}% | "
            f"{r['wall_median']:.3f}x, {100 * r['wall_cv']:.1f}% | "
            f"{r['unpaired_median']:.3f}x | {100 * r['unpaired_cv']:.1f}% | {r['quiet']:.3f}x | "
            f"{100 * r['paired_vs_quiet']:+.1f}% |"
        )
    return rows, "\n".join(lines)


def _efficiency(args: argparse.Namespace, target: Target) -> tuple[list[dict], str]:
    rows = []
    for name in args.models:
        model, pruned, x = _pruned_pair(name, args.batch)
        reduction = count_macs(model, x) / count_macs(pruned, x)
        for backend in args.backends:
            t = Target(threads=target.threads, batch_size=args.batch, backend=backend)
            started = time.perf_counter()
            try:
                s = SpeedupMeter(model, x, t).measure(pruned, budget_s=args.budget, lock_path=args.lock_path)
            except ap.TargetError as exc:
                print(f"{name} {backend}: {exc}", file=sys.stderr)
                continue
            rows.append(
                {
                    "model": name,
                    "backend": backend,
                    "macs_reduction": reduction,
                    "efficiency": s.ratio / reduction,
                    "wall_s": time.perf_counter() - started,
                    **s.as_dict(),
                }
            )
            print(f"{name} {backend}: done", file=sys.stderr)
    lines = [
        f"Uniform 50% structured vs unpruned, batch {args.batch}, {target.threads} thread(s), paired speedup "
        f"(budget {args.budget:g} s). Efficiency = speedup / MACs reduction.",
        "",
        "| model | backend | MACs reduction | unpruned ms | pruned ms | speedup [95% interval] | converged "
        "| efficiency | wall s (prepare + measure) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['macs_reduction']:.2f}x | {r['reference_ms']:.2f} | "
            f"{r['model_ms']:.2f} | {r['ratio']:.2f}x [{r['low']:.2f}, {r['high']:.2f}] | {r['converged']} | "
            f"{r['efficiency']:.2f} | {r['wall_s']:.0f} |"
        )
    return rows, "\n".join(lines)


def _speedup_modes(args: argparse.Namespace, argv: list[str] | None) -> int:
    target = Target(threads=args.threads, batch_size=None)
    mode = "drift" if args.drift else "efficiency"
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows, table = (_drift if args.drift else _efficiency)(args, target)
    command = "python scripts/bench_latency.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    meta = {
        **run_meta(command=command.strip()),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    out = args.out.with_name(f"{args.out.stem}_{mode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, rows, table=table, meta=meta)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\nReproduce: {meta['command']}  (load average before/after: {load_before} / {meta['loadavg_after']})")
    print(f"Numbers written to {out} and {out.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=zoo.names(), choices=zoo.names())
    parser.add_argument("--batch", type=int, default=8, help="example batch size (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="threads of the measurement and of the trainer")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per model and condition")
    parser.add_argument("--budget", type=float, default=1.0, help="time budget of one measurement, s")
    parser.add_argument("--lock-path", default=str(default_lock_path()), help="the measurement lock file")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=hasattr(os, "sched_setaffinity"))
    parser.add_argument("--out", type=Path, default=Path("results/bench_latency.json"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--drift", action="store_true", help="paired vs unpaired speedup under a busy/idle disturber")
    mode.add_argument("--efficiency", action="store_true", help="paired speedup / MACs reduction per backend")
    parser.add_argument("--busy", type=float, default=3.0, help="--drift: seconds the disturber works")
    parser.add_argument("--idle", type=float, default=3.0, help="--drift: seconds the disturber rests")
    parser.add_argument(
        "--backends", nargs="+", default=["dense", "onnxruntime"], help="--efficiency: latency backends to compare"
    )
    args = parser.parse_args(argv)
    if args.drift or args.efficiency:
        return _speedup_modes(args, argv)

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = args.pin and len(cpus) >= 2
    if pin:
        os.sched_setaffinity(0, {cpus[0]})
    target = Target(threads=args.threads)
    ctx = mp.get_context("spawn")
    mode, steps = ctx.Value("i", IDLE), ctx.Value("l", 0)
    trainer = ctx.Process(
        target=_trainer, args=(mode, steps, args.threads, cpus[1] if pin else None, args.lock_path), daemon=True
    )
    trainer.start()
    while steps.value != -1:  # the trainer's start-up (importing torch) must not overlap "quiet"
        time.sleep(0.05)
    with steps.get_lock():
        steps.value = 0
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    try:
        for name in args.models:
            model, x = zoo.get(name, batch_size=args.batch)
            row: dict[str, Any] = {"model": name}
            row["quiet"], _ = _run_condition(mode, steps, IDLE, model, x, target, args)
            row["train_nolock"], row["steps_per_s_nolock"] = _run_condition(mode, steps, TRAIN, model, x, target, args)
            row["train_lock"], row["steps_per_s_lock"] = _run_condition(
                mode, steps, TRAIN_GATED, model, x, target, args
            )
            rows.append(row)
            print(f"{name}: done", file=sys.stderr)
    finally:
        mode.value = STOP
        trainer.join(timeout=30)

    command = "python scripts/bench_latency.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    table = _table(rows, target, args)
    meta = {
        **run_meta(command=command.strip()),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": len(cpus) or os.cpu_count(),
        "pinned": pin,
        "torch": torch.__version__,
        "autoprune": ap.__version__,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "target": str(target),
        "batch": args.batch,
        "repeats": args.repeats,
        "budget_s": args.budget,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, rows, table=table, meta=meta)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\nReproduce: {meta['command']}  (load average before/after: {load_before} / {meta['loadavg_after']})")
    print(f"Numbers written to {args.out} and {args.out.with_suffix('.md')}")
    return 0


def _table(rows: list[dict], target: Target, args: argparse.Namespace) -> str:
    def cell(c: dict, quiet: dict | None = None) -> str:
        text = f"{c['median_ms']:.2f} ms, CV {100 * c['cv']:.1f}%"
        if quiet is not None:
            text += f" ({100 * (c['median_ms'] / quiet['median_ms'] - 1):+.0f}%)"
        return text

    lines = [
        f"Latency on `{target}`, batch {args.batch}, {args.repeats} measurements of budget {args.budget} s each. "
        "Cells: median of the medians, CV of the repeated measurements, change against quiet.",
        "",
        "| model | quiet | cost / measurement | train, no lock | train, lock + gate | trainer steps/s (no gate / gated) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {cell(r['quiet'])} | {r['quiet']['cost_s']:.2f} s | "
            f"{cell(r['train_nolock'], r['quiet'])} | {cell(r['train_lock'], r['quiet'])} | "
            f"{r['steps_per_s_nolock']:.1f} / {r['steps_per_s_lock']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
