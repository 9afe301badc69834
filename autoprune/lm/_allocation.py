"""Per-layer sparsity allocation under a global budget: uniform, OWL, the projection that
keeps any allocation on budget, and EvoPress's level switch.

A *unit* is what gets one amount: a decoder block (all its linear layers) or a single linear
layer. A budget is a fraction of the units' weights; an allocation meets it when the
weight-weighted mean of its amounts equals it (``on_budget``: within half a percent).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from autoprune._errors import ConfigError
from autoprune.oneshot import InputStats, decoder_blocks, prunable_linears, scores, weight_matrix

__all__ = [
    "GRANULARITIES",
    "allocation_units",
    "level_switch",
    "on_budget",
    "owl_allocation",
    "project_to_budget",
    "total_sparsity",
    "uniform_allocation",
]

GRANULARITIES = ("block", "layer")
BUDGET_TOLERANCE = 0.005


def allocation_units(model: nn.Module, granularity: str = "block") -> dict[str, list[str]]:
    """Unit name -> the linear layers it holds, in the model's order."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"`granularity` must be one of {GRANULARITIES}, but got granularity={granularity!r}")
    linears = list(prunable_linears(model))
    if granularity == "layer":
        return {name: [name] for name in linears}
    blocks = decoder_blocks(model)
    if not blocks:
        raise ConfigError("granularity='block' needs a decoder with a list of blocks; this model has none (use 'layer')")
    units = {b: [n for n in linears if n.startswith(b + ".")] for b in blocks}
    return {b: names for b, names in units.items() if names}


def unit_sizes(model: nn.Module, units: Mapping[str, Sequence[str]]) -> dict[str, int]:
    return {u: sum(weight_matrix(model.get_submodule(n)).numel() for n in names) for u, names in units.items()}


def total_sparsity(amounts: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    """The weight-weighted mean amount: the share of the units' weights pruned."""
    return sum(amounts[u] * sizes[u] for u in amounts) / sum(sizes[u] for u in amounts)


def on_budget(amounts: Mapping[str, float], sizes: Mapping[str, int], target: float) -> bool:
    return abs(total_sparsity(amounts, sizes) - target) <= BUDGET_TOLERANCE


def uniform_allocation(units: Mapping[str, Sequence[str]], target: float) -> dict[str, float]:
    return {u: target for u in units}


def project_to_budget(
    amounts: Mapping[str, float], sizes: Mapping[str, int], target: float, *, low: float = 0.0, high: float = 0.95
) -> dict[str, float]:
    """``amounts`` shifted by one constant (each clipped to ``[low, high]``) so that their
    weighted mean is ``target``: the shape of the allocation kept, the budget met."""
    if not low <= target <= high:
        raise ConfigError(f"the sparsity target must lie in [{low}, {high}], but got {target}")

    def mean(shift: float) -> float:
        return total_sparsity({u: min(high, max(low, a + shift)) for u, a in amounts.items()}, sizes)

    lo, hi = -1.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if mean(mid) < target:
            lo = mid
        else:
            hi = mid
    shift = (lo + hi) / 2
    return {u: round(min(high, max(low, a + shift)), 6) for u, a in amounts.items()}


def owl_allocation(
    model: nn.Module,
    stats: Mapping[str, InputStats],
    units: Mapping[str, Sequence[str]],
    target: float,
    *,
    m: float = 5.0,
    lam: float = 0.08,
) -> dict[str, float]:
    """OWL (Yin et al., 2024): a unit's outlier ratio is the share of its Wanda scores above
    ``m`` times their mean; ratios are mapped linearly onto ``[-lam, +lam]`` around the
    target, more outliers getting less sparsity, then put on budget."""
    ratios = {}
    for unit, names in units.items():
        flat = torch.cat(
            [scores("wanda", weight_matrix(model.get_submodule(n)), stats[n]).reshape(-1) for n in names]
        )
        ratios[unit] = float((flat > m * flat.mean()).float().mean())
    lo_r, hi_r = min(ratios.values()), max(ratios.values())
    span = hi_r - lo_r
    density = {u: (r - lo_r) / span * 2 * lam if span > 0 else 0.0 for u, r in ratios.items()}
    mean_density = sum(density.values()) / len(density)
    raw = {u: target - (d - mean_density) for u, d in density.items()}
    return project_to_budget(raw, unit_sizes(model, units), target)


def level_switch(
    amounts: Mapping[str, float], sizes: Mapping[str, int], step: float, rng: random.Random, *, high: float = 0.95
) -> dict[str, float] | None:
    """EvoPress's mutation: one unit one level sparser, another one level denser, the rest
    kept; with units of unequal size the denser one moves by as many weights. ``None`` when
    no pair can move."""
    units = list(amounts)
    ups = [u for u in units if amounts[u] + step <= high + 1e-9]
    downs = [u for u in units if amounts[u] - step >= -1e-9]
    pairs = [(a, b) for a in ups for b in downs if a != b]
    if not pairs:
        return None
    up, down = rng.choice(pairs)
    moved = dict(amounts)
    moved[up] = round(amounts[up] + step, 6)
    moved[down] = round(max(0.0, amounts[down] - step * sizes[up] / sizes[down]), 6)
    return moved
