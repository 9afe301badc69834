"""Show what a search would prune, before running one: every prunable layer or coupled group
of the task's model (channels, channel groups, attention heads, the methods that apply, the
largest safe amount, why structured pruning does not apply where it does not), what was
skipped and why, and how many parameters the study config's search space samples. With
``--sensitivity``, also the sensitivity scan the search starts with: every unit pruned alone
at the config's amounts, BatchNorm re-estimated, validation accuracy and MACs removed."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from autoprune.config import SearchConfig, load_toml

if TYPE_CHECKING:
    from torch import nn

    from autoprune.tasks import Task


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", metavar="STUDY.toml", help="study config: its task, task options and space")
    p.add_argument("--task", help="built-in task name (digits) or 'package.module:factory' (default: the config's)")
    p.add_argument(
        "--sensitivity",
        action="store_true",
        help="also scan each unit pruned alone (BatchNorm re-estimated, no fine-tune): accuracy and MACs per amount",
    )


def run(args: argparse.Namespace) -> int:
    from autoprune.preflight import analyse
    from autoprune.space import SearchSpace
    from autoprune.study import build_task

    cfg = load_toml(args.config) if args.config else SearchConfig()
    if args.task:
        cfg = cfg.merged(task=args.task, task_options={} if args.task != cfg.task else cfg.task_options)
    task = build_task(cfg)
    if not task.higher_is_better:  # a language model: what the allocation search allocates (no tracing)
        _lm_layers(cfg.task, task)
        return 0
    analysis = analyse(task.model, task.example_inputs, output=task.output)
    print(f"task {cfg.task}: {type(task.model).__name__}, {sum(p.numel() for p in task.model.parameters()):,} parameters")
    print()
    header = ("layer", "type", "channels", "groups", "heads", "members", "params", "methods", "max amount")
    rows = [
        (
            info.name,
            info.type,
            str(info.channels),
            str(info.channel_groups),
            str(info.heads or ""),
            str(len(info.members)),
            f"{info.params:,}",
            ",".join(info.methods) or "-",
            f"{info.max_amount:.2f}" if info.methods else "-",
        )
        for info in analysis.layers
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in (header, *rows):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    notes = [(i.name, i.reason) for i in analysis.layers if i.reason]
    if notes:
        print()
        print("not structured:")
        for name, reason in notes:
            print(f"  {name}: {reason}")
    if analysis.skipped:
        print()
        print("skipped:")
        for name, reason in analysis.skipped:
            print(f"  {name}: {reason}")
    from autoprune.study import paying_space

    space_cfg, notice = paying_space(cfg)
    space = SearchSpace(analysis.layers, dataclasses.replace(space_cfg, parametrization="unit"))
    print()
    if notice is not None:
        print(notice)
    print(
        f"search space ({cfg.space.granularity} granularity): {len(space.units)} units, "
        f"at most {space.dimension} parameters per trial"
        + (" in the per-unit parametrization" if space_cfg.parametrization != "unit" else "")
    )
    if space_cfg.parametrization != "unit" and not args.sensitivity:
        print(f"  (space.parametrization = {space_cfg.parametrization!r} is built on the sensitivity scan: --sensitivity)")
    if args.sensitivity:
        from autoprune.study import scan_task

        sens = scan_task(task, space, cfg, speedup=_scan_timer(task, cfg))
        if space_cfg.parametrization != "unit":
            searched = SearchSpace(analysis.layers, space_cfg, sensitivity=sens)
            print(f"search space ({space_cfg.parametrization} parametrization): at most {searched.dimension} parameters per trial")
        print()
        print(
            f"sensitivity ({'BatchNorm re-estimated' if sens.calibrated else 'as pruned'}, no fine-tune; "
            f"unpruned {sens.reference_score:.2f}; {sens.seconds:.1f} s):"
        )
        columns = ["unit", "method", "amount", "score", "drop", "macs_fraction"]
        if sens.path_resource == "latency":
            columns.append("speedup")  # each structured point timed on the target, paired
        table = sens.table()[columns]
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _scan_timer(task: Task, cfg: SearchConfig) -> Callable[[nn.Module], float] | None:
    """The scan's timing as a search does it (latency an objective): a paired speedup on the
    study's target with half a trial's budget; None otherwise."""
    if "latency" not in cfg.objectives or cfg.sensitivity_resource != "latency":
        return None
    from autoprune.evaluation import SpeedupMeter
    from autoprune.study import study_target

    meter = SpeedupMeter(task.model, task.example_inputs, study_target(cfg))
    return lambda model: meter.measure(model, budget_s=cfg.latency_budget_s / 2, rel_tol=cfg.latency_rel_tol).ratio


def _lm_layers(name: str, task: Task) -> None:
    from autoprune.lm._allocation import allocation_units, unit_sizes
    from autoprune.oneshot import prunable_linears, weight_matrix

    model = task.model
    linears = prunable_linears(model)
    units = allocation_units(model, "block")
    sizes = unit_sizes(model, units)
    print(f"task {name}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(linears)} prunable linear layers in {len(units)} blocks")  # fmt: skip
    print("criteria: magnitude, wanda, sparsegpt; patterns: unstructured or N:M (a layer's input size a multiple of M)")
    print()
    print(f"{'unit (block)':<24} {'weights':>10}  layers (out x in)")
    for unit, names in units.items():
        shapes = ", ".join(
            f"{n.rsplit('.', 1)[-1].removesuffix('_proj')} {'x'.join(map(str, weight_matrix(linears[n]).shape))}"
            for n in names
        )
        print(f"{unit:<24} {sizes[unit]:>10,}  {shapes}")
    untouched = sum(p.numel() for p in model.parameters()) - sum(sizes.values())
    print()
    print(f"not pruned: {untouched:,} parameters (embeddings, the tied output layer, norms)")
    print(f"search space: one sparsity per block ({len(units)} dimensions; --granularity layer: {len(linears)})")
    from autoprune.decoder import StructureError, allowed_head_amounts, decoder_layout

    try:
        layout = decoder_layout(model)
    except StructureError as exc:
        print(f"structural pruning (--structure): not offered: {exc}")
        return
    block_shapes = layout.shapes(model)
    print()
    print("structural pruning (--structure), per block: query heads (in key/value groups), MLP channels, the block")
    for block, shape in zip(layout.block_names(model), block_shapes, strict=True):
        amounts = ", ".join(f"{a:g}" for a in allowed_head_amounts(shape))
        print(f"{block:<24} {shape.heads} heads in {shape.kv_heads} groups of {shape.head_dim} dims (amounts "
              f"{amounts}); {shape.intermediate} MLP channels")  # fmt: skip
