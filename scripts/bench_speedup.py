"""Measured CPU speedup of structured pruning against its MACs reduction.

For each reference model (``autoprune.testing.models``), batch size and structured amount, this prunes
the model with ``Schedule.uniform`` (channels physically removed by Torch-Pruning) and, for
comparison, with the seed project's approach: ``torch.nn.utils.prune.ln_structured`` masks
that zero whole output channels but keep the tensors' shapes. It times the dense model and
both pruned ones in the same run, interleaved, and reports

- MACs reduction: dense MACs / pruned MACs (``torch.utils.flop_counter``, FLOPs / 2),
- speedup: median dense latency / median pruned latency,
- efficiency: speedup / MACs reduction (1.0 = the latency falls as fast as the MACs).

Usage:
    python scripts/bench_speedup.py --repeats 30 --out results/bench_speedup.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

import autoprune as ap
from autoprune.evaluation import backend_names
from autoprune.testing import models as zoo


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of one forward pass, from PyTorch's FLOP counter (a MAC is two FLOPs).

    Counted with autograd on: without it nn.MultiheadAttention takes its fused fast path,
    which the counter does not see.
    """
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def masked_copy(model: nn.Module, x: torch.Tensor, amount: float) -> nn.Module:
    """The seed's approach: zero whole output channels with ln_structured masks, keep shapes."""
    masked = copy.deepcopy(model)
    for info in ap.prunable_layers(masked, x):
        if "structured" not in info.methods:
            continue
        for layer, pname in info.weights:
            prune.ln_structured(masked.get_submodule(layer), pname, amount=amount, n=1, dim=0)
    for module in masked.modules():
        for pname in ("weight", "in_proj_weight"):
            if prune.is_pruned(module) and hasattr(module, pname + "_orig"):
                prune.remove(module, pname)
    return masked


def deployed(model: nn.Module, x: torch.Tensor, backend: str, threads: int) -> Callable[[torch.Tensor], object]:
    """``model`` as the latency backend runs it (``dense``: eager PyTorch; ``torchscript``:
    traced, frozen and optimised for inference, BatchNorm folded into the convolutions)."""
    if backend == "dense":
        return model
    from autoprune.evaluation import Target, get_backend

    with torch.inference_mode():
        run = get_backend(backend).prepare(model, x, Target.parse(f"cpu:threads={threads},backend={backend}"))
    return lambda _x: run()


def _time_once(model: Callable[[torch.Tensor], object], x: torch.Tensor, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        model(x)
    return (time.perf_counter() - start) / inner


def time_interleaved(
    models: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor, *, repeats: int, warmup: int, min_time_s: float
) -> dict[str, float]:
    """Median seconds per forward of each model, timing them in turn so drift hits all alike."""
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        # Enough calls per timing that the clock's resolution and call overhead do not matter.
        slowest = max(_time_once(m, x, 1) for m in models.values())
        inner = max(1, int(min_time_s / max(slowest, 1e-9)))
        samples: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                samples[name].append(_time_once(model, x, inner))
    return {name: statistics.median(s) for name, s in samples.items()}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in args.models:
        for batch in args.batches:
            model, x = zoo.get(name, batch_size=batch, seed=args.seed)
            dense_macs = count_macs(model, x)
            variants: dict[str, nn.Module] = {"dense": model}
            macs: dict[str, int] = {"dense": dense_macs}
            for amount in args.amounts:
                schedule = ap.uniform_schedule(model, x, amount=amount, round_to=args.round_to, seed=args.seed)
                pruned = ap.apply_schedule(model, schedule, example_inputs=x).eval()
                variants[f"pruned-{amount}"] = pruned
                macs[f"pruned-{amount}"] = count_macs(pruned, x)
                variants[f"masked-{amount}"] = masked_copy(model, x, amount).eval()
            runnables = {key: deployed(m, x, args.backend, args.threads) for key, m in variants.items()}
            latency = time_interleaved(
                runnables, x, repeats=args.repeats, warmup=args.warmup, min_time_s=args.min_time_ms / 1000
            )
            for amount in args.amounts:
                key = f"pruned-{amount}"
                reduction = dense_macs / macs[key]
                speedup = latency["dense"] / latency[key]
                rows.append(
                    {
                        "model": name,
                        "batch": batch,
                        "amount": amount,
                        "round_to": args.round_to,
                        "backend": args.backend,
                        "dense_macs": dense_macs,
                        "pruned_macs": macs[key],
                        "macs_reduction": reduction,
                        "dense_ms": latency["dense"] * 1e3,
                        "pruned_ms": latency[key] * 1e3,
                        "speedup": speedup,
                        "efficiency": speedup / reduction,
                        "masked_ms": latency[f"masked-{amount}"] * 1e3,
                        "masked_speedup": latency["dense"] / latency[f"masked-{amount}"],
                    }
                )
                print(f"{name} batch {batch} amount {amount}: done", file=sys.stderr)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| model | batch | amount | MACs reduction | dense ms | pruned ms | speedup | efficiency "
        "| masked (seed) ms | masked speedup |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['amount']:.0%} | {r['macs_reduction']:.2f}x | {r['dense_ms']:.3f} "
            f"| {r['pruned_ms']:.3f} | {r['speedup']:.2f}x | {r['efficiency']:.2f} | {r['masked_ms']:.3f} "
            f"| {r['masked_speedup']:.2f}x |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=zoo.names(), choices=zoo.names())
    parser.add_argument("--amounts", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=30, help="timings per model (the median is reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed forward passes per model first")
    parser.add_argument("--min-time-ms", type=float, default=20.0, help="shortest duration of one timing")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--round-to", type=int, default=None, help="Schedule.round_to for the pruned models")
    parser.add_argument(
        "--backend",
        choices=backend_names(),
        default="dense",
        help="how the models run: a latency backend (dense: eager PyTorch; torchscript; onnxruntime; compile)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("results/bench_speedup.json"), help=".json; a .csv is written beside it"
    )
    args = parser.parse_args(argv)
    for amount in args.amounts:
        if not 0 < amount < 1:
            parser.error(f"--amounts must lie in (0, 1), but got {amount}")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.platform(),
        "processor": platform.processor(),
    }
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    with args.out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(markdown(rows))
    print(f"\n{args.threads} threads, backend {args.backend}, median of {args.repeats} timings; torch {torch.__version__}")
    print(f"numbers in {args.out.with_suffix('.json')} and {args.out.with_suffix('.csv')}")
    print(f"reproduce: {meta['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
