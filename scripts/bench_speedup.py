"""Measured CPU speedup of structured pruning against its MACs reduction.

Models are named: an ``autoprune.testing.models`` reference model (``resnet``, ``transformer``...) or
any timm model (``resnet50``, ``vit_small_patch16_224``: random weights, its default input
size). For each model, batch size and structured amount, this prunes
the model with ``Schedule.uniform`` (channels physically removed by Torch-Pruning) and, for
comparison, with the seed project's approach: ``torch.nn.utils.prune.ln_structured`` masks
that zero whole output channels but keep the tensors' shapes. It times the dense model and
both pruned ones in one sitting, each against the dense model in ABBA rounds (dense,
pruned, pruned, dense), and reports

- MACs reduction: dense MACs / pruned MACs (``autoprune.evaluation.count_macs``),
- speedup: the median over rounds of (dense time / pruned time) in that round, with the
  lowest and highest round,
- efficiency: speedup / MACs reduction (1.0 = the latency falls as fast as the MACs).

The ABBA alternation is written out here because ``autoprune.evaluation.measure_speedup``
is not on this branch yet; the script should call it once it is.

Usage:
    python scripts/bench_speedup.py --repeats 30 --out results/bench_speedup.json
    python scripts/bench_speedup.py --models resnet50 vit_small_patch16_224 --batches 8 32 \
        --amounts 0.5 --repeats 5 --no-masked --out results/bench_speedup_timm.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from _results import run_meta, write_result
from torch import nn
from torch.nn.utils import prune

import autoprune as ap
from autoprune.evaluation import count_macs
from autoprune.testing import models as zoo


def load_model(name: str, batch: int, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A reference model of ``autoprune.testing.models`` by name, else a timm model with random weights."""
    if name in zoo.names():
        return zoo.get(name, batch_size=batch, seed=seed)
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    shape = model.pretrained_cfg.get("input_size", (3, 224, 224))
    return model, torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


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


def time_abba(
    reference: Callable[[torch.Tensor], object],
    candidate: Callable[[torch.Tensor], object],
    x: torch.Tensor,
    *,
    rounds: int,
    warmup: int,
    min_time_s: float,
) -> dict[str, float]:
    """Speedup of ``candidate`` over ``reference`` in ABBA rounds: the median per-round ratio.

    Each round times reference, candidate, candidate, reference, so a drift of the machine
    within a round hits both alike; the ratio of a round is (reference time) / (candidate time).
    """
    with torch.inference_mode():
        for _ in range(warmup):
            reference(x)
            candidate(x)
        # Enough calls per timing that the clock's resolution and call overhead do not matter.
        inner = max(1, int(min_time_s / max(_time_once(reference, x, 1), 1e-9)))
        ratios, ref_s, cand_s = [], [], []
        for _ in range(rounds):
            a1 = _time_once(reference, x, inner)
            b1 = _time_once(candidate, x, inner)
            b2 = _time_once(candidate, x, inner)
            a2 = _time_once(reference, x, inner)
            ratios.append((a1 + a2) / (b1 + b2))
            ref_s += [a1, a2]
            cand_s += [b1, b2]
    return {
        "speedup": statistics.median(ratios),
        "low": min(ratios),
        "high": max(ratios),
        "reference_ms": statistics.median(ref_s) * 1e3,
        "model_ms": statistics.median(cand_s) * 1e3,
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    timing = {"rounds": args.repeats, "warmup": args.warmup, "min_time_s": args.min_time_ms / 1000}
    for name in args.models:
        for batch in args.batches:
            model, x = load_model(name, batch, args.seed)
            dense_macs = count_macs(model, x)
            dense = deployed(model, x, args.backend, args.threads)
            for amount in args.amounts:
                schedule = ap.uniform_schedule(model, x, amount=amount, round_to=args.round_to, seed=args.seed)
                pruned = ap.apply_schedule(model, schedule, example_inputs=x).eval()
                macs = count_macs(pruned, x)
                t = time_abba(dense, deployed(pruned, x, args.backend, args.threads), x, **timing)
                row = {
                    "model": name,
                    "batch": batch,
                    "amount": amount,
                    "round_to": args.round_to,
                    "backend": args.backend,
                    "dense_macs": dense_macs,
                    "pruned_macs": macs,
                    "macs_reduction": dense_macs / macs,
                    "dense_ms": t["reference_ms"],
                    "pruned_ms": t["model_ms"],
                    "speedup": t["speedup"],
                    "speedup_low": t["low"],
                    "speedup_high": t["high"],
                    "efficiency": t["speedup"] / (dense_macs / macs),
                    "masked_ms": None,
                    "masked_speedup": None,
                }
                if args.masked:
                    m = time_abba(
                        dense,
                        deployed(masked_copy(model, x, amount).eval(), x, args.backend, args.threads),
                        x,
                        **timing,
                    )
                    row.update(masked_ms=m["model_ms"], masked_speedup=m["speedup"])
                rows.append(row)
                print(markdown([row]).splitlines()[-1], file=sys.stderr, flush=True)  # survives an interrupted run
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| model | batch | amount | MACs reduction | dense ms | pruned ms | speedup | efficiency "
        "| masked (seed) ms | masked speedup |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        masked = "| - | - |" if r["masked_ms"] is None else f"| {r['masked_ms']:.3f} | {r['masked_speedup']:.2f}x |"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['amount']:.0%} | {r['macs_reduction']:.2f}x | {r['dense_ms']:.3f} "
            f"| {r['pruned_ms']:.3f} | {r['speedup']:.2f}x ({r['speedup_low']:.2f}-{r['speedup_high']:.2f}) "
            f"| {r['efficiency']:.2f} " + masked
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=zoo.names(), help=f"{', '.join(zoo.names())} or any timm model name"
    )
    parser.add_argument("--amounts", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=30, help="ABBA rounds per model (the median ratio is reported)")
    parser.add_argument(
        "--masked", action=argparse.BooleanOptionalAction, default=True, help="also time the seed's masked model"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed forward passes per model first")
    parser.add_argument("--min-time-ms", type=float, default=20.0, help="shortest duration of one timing")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--round-to", type=int, default=None, help="Schedule.round_to for the pruned models")
    parser.add_argument(
        "--backend",
        default="dense",
        help="how the models run: eager PyTorch (dense), traced+frozen TorchScript (torchscript) or any "
        "registered latency backend (onnxruntime once it lands)",
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
        **run_meta(list(argv) if argv is not None else None),
        "torch": torch.__version__,
        "threads": args.threads,
        "processor": platform.processor(),
    }
    write_result(args.out.with_suffix(".json"), rows, table=markdown(rows), meta=meta)
    with args.out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(markdown(rows))
    print(
        f"\n{args.threads} threads, backend {args.backend}, median of {args.repeats} ABBA rounds (lowest-highest round); "
        f"torch {torch.__version__}"
    )
    print(f"numbers in {args.out.with_suffix('.json')} and {args.out.with_suffix('.csv')}")
    print(f"reproduce: {meta['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
