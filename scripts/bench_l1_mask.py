"""Unstructured magnitude masks: torch's ``L1Unstructured`` (``torch.topk``) against
autoprune's (``oneshot.L1Unstructured``, ``torch.kthvalue``), timed in alternation in one
run; the speedup is the median of per-round ratios with its 95% interval.

    OMP_NUM_THREADS=1 python scripts/bench_l1_mask.py            # prints the table
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn.utils import prune

from autoprune.evaluation._speedup import median_interval
from autoprune.oneshot import L1Unstructured

SHAPES = {"linear 768x3072": (3072, 768), "conv 256x256x3x3": (256, 256, 3, 3), "linear 4096x4096": (4096, 4096)}


def _seconds(method: prune.BasePruningMethod, weight: torch.Tensor, ones: torch.Tensor) -> float:
    start = time.perf_counter()
    method.compute_mask(weight, ones)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--amount", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    print(f"amount {args.amount}, {args.rounds} rounds, one thread")
    print(f"{'weight':<20} {'topk ms':>9} {'kthvalue ms':>12}  speedup (95% interval)  same mask")
    for name, shape in SHAPES.items():
        weight = torch.randn(*shape, generator=g)
        ones = torch.ones_like(weight)
        theirs, ours = prune.L1Unstructured(amount=args.amount), L1Unstructured(amount=args.amount)
        same = torch.equal(theirs.compute_mask(weight, ones), ours.compute_mask(weight, ones))
        ratios, t_theirs, t_ours = [], [], []
        for r in range(args.rounds):  # alternated, the order flipped every round
            if r % 2:
                b, a = _seconds(ours, weight, ones), _seconds(theirs, weight, ones)
            else:
                a, b = _seconds(theirs, weight, ones), _seconds(ours, weight, ones)
            t_theirs.append(a)
            t_ours.append(b)
            ratios.append(a / b)
        ratio, low, high, _ = median_interval(ratios)
        print(f"{name:<20} {sorted(t_theirs)[len(t_theirs) // 2] * 1e3:>9.1f} {sorted(t_ours)[len(t_ours) // 2] * 1e3:>12.1f}"
              f"  {ratio:.2f}x [{low:.2f}, {high:.2f}]        {same}")  # fmt: skip


if __name__ == "__main__":
    main()
