"""Whole attention heads against shorter heads: MACs and measured CPU latency.

Prunes the residual-stream group of the reference transformer (``autoprune.testing.models``, two
encoder blocks with 4-head ``nn.MultiheadAttention``, embedding 128) at 25/50/75%, once with
``Schedule(attention_heads=False)`` (every head keeps fewer dims) and once with
``attention_heads=True`` (whole heads go), and times all variants interleaved in one run.

Usage:
    python scripts/bench_heads.py [--batch 32] [--threads 2] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import autoprune as ap
from autoprune.evaluation import count_macs
from autoprune.testing import models as zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30, help="timings per variant (the median is reported)")
    parser.add_argument("--inner", type=int, default=20, help="forward passes per timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x = zoo.get("transformer", batch_size=args.batch)
    model.eval()
    variants = {"unpruned": model}
    for amount in (0.25, 0.5, 0.75):
        for heads in (False, True):
            schedule = ap.Schedule(layers={"blocks.1.mlp.2": ap.LayerPlan("structured", amount)}, attention_heads=heads)
            label = f"{amount:.0%} {'whole heads' if heads else 'head dims'}"
            variants[label] = ap.apply_schedule(model, schedule, example_inputs=x).eval()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for m in variants.values():
            for _ in range(5):
                m(x)
        for _ in range(args.repeats):
            for label, m in variants.items():
                start = time.perf_counter()
                for _ in range(args.inner):
                    m(x)
                samples[label].append((time.perf_counter() - start) / args.inner)
    base = statistics.median(samples["unpruned"])
    print("| variant | heads x head_dim | MACs per sample | latency ms | speedup |")
    print("|---|---|---:|---:|---:|")
    for label, m in variants.items():
        attn = m.blocks[0].attn
        median = statistics.median(samples[label])
        print(
            f"| {label} | {attn.num_heads}x{attn.head_dim} | {count_macs(m, x):,} | {median * 1e3:.3f} "
            f"| {base / median:.2f}x |"
        )
    print(f"\nbatch {args.batch}, {args.threads} threads, median of {args.repeats} timings of {args.inner} passes; "
          f"torch {torch.__version__}")
    print(f"reproduce: python scripts/bench_heads.py --batch {args.batch} --threads {args.threads} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
