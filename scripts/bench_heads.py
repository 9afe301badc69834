"""Whole attention heads against shorter heads: MACs and measured CPU latency.

Prunes the residual-stream group of the reference transformer (``autoprune.testing.models``, two
encoder blocks with 4-head ``nn.MultiheadAttention``, embedding 128) at 25/50/75%, once with
``Schedule(attention_heads=False)`` (every head keeps fewer dims) and once with
``attention_heads=True`` (whole heads go), and times each variant in alternation with the
unpruned model (``ap.measure_speedup``: paired rounds, the speedup with its 95% interval, so
the machine's drift between variants cancels).

Usage:
    python scripts/bench_heads.py [--batch 32] [--threads 2] [--budget 4]
"""

from __future__ import annotations

import argparse

import torch

import autoprune as ap
from autoprune.evaluation import count_macs
from autoprune.testing import models as zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per paired speedup measurement")
    parser.add_argument("--rel-tol", type=float, default=0.02, help="stop when the 95%% interval is within +-this")
    args = parser.parse_args()
    target = f"cpu:threads={args.threads}"
    model, x = zoo.get("transformer", batch_size=args.batch)
    model.eval()
    variants = {"unpruned": model}
    for amount in (0.25, 0.5, 0.75):
        for heads in (False, True):
            schedule = ap.Schedule(layers={"blocks.1.mlp.2": ap.LayerPlan("structured", amount)}, attention_heads=heads)
            label = f"{amount:.0%} {'whole heads' if heads else 'head dims'}"
            variants[label] = ap.apply_schedule(model, schedule, example_inputs=x).eval()
    print("| variant | heads x head_dim | MACs per sample | latency ms (paired rounds) | speedup [95% interval] |")
    print("|---|---|---:|---:|---:|")
    for label, m in variants.items():
        attn = m.blocks[0].attn
        # unpruned too: timed against itself, its interval shows the noise floor of the ratio
        s = ap.measure_speedup(m, model, x, target=target, budget_s=args.budget, rel_tol=args.rel_tol)
        wide = "" if s.converged else " (wider than asked)"
        print(
            f"| {label} | {attn.num_heads}x{attn.head_dim} | {count_macs(m, x):,} | {s.model_ms:.3f} "
            f"| {s.ratio:.2f}x [{s.low:.2f}, {s.high:.2f}]{wide} |"
        )
    print(f"\nbatch {args.batch}, target {target}, each variant timed in alternation with the unpruned model "
          f"(up to {args.budget:g} s, interval +-{args.rel_tol:.0%} asked); torch {torch.__version__}")
    print(f"reproduce: python scripts/bench_heads.py --batch {args.batch} --threads {args.threads} --budget {args.budget:g}")


if __name__ == "__main__":
    main()
