"""The executor: turns a Schedule into a pruned copy of a model.

Structured plans physically remove channels with Torch-Pruning (so the model gets faster on
dense kernels); unstructured plans put L1-magnitude masks from ``torch.nn.utils.prune`` on
weights, which survive fine-tuning and are made permanent at the end. The returned model is
a plain ``nn.Module``: no ``weight_orig``/``weight_mask`` and no hooks left behind.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from autoprune import _attention
from autoprune._errors import ScheduleError
from autoprune._tp import torch_pruning
from autoprune.oneshot import L1Unstructured, make_permanent
from autoprune.preflight import LayerInfo, ModelAnalysis, analyse, root_types, tracer_options
from autoprune.schedule import LayerPlan, Schedule, step_amounts
from autoprune.untraced import apply_decoder_structure, apply_linear_oneshot, is_decoder_structure, is_linear_oneshot

__all__ = ["apply_schedule", "global_amounts", "resolve_plans", "StepCallback"]

_logger = logging.getLogger(__name__)

FineTune = Callable[[nn.Module, int], None]
# Called after each pruning step (and its fine-tuning) with (model, step, n_steps); it may
# raise to stop the schedule early (the search uses this for early rejection).
StepCallback = Callable[[nn.Module, int, int], None]


def resolve_plans(schedule: Schedule, analysis: ModelAnalysis) -> dict[str, tuple[LayerInfo, LayerPlan]]:
    """Map each active plan to its preflight entry, checking that it is allowed there."""
    lookup = analysis.by_member()
    skipped = dict(analysis.skipped)
    resolved: dict[str, tuple[LayerInfo, LayerPlan]] = {}
    planned_as: dict[str, str] = {}  # entry -> the layer name its plan was given under
    ignored = set(schedule.ignore)
    for name in schedule.ignore:
        if name not in lookup and name not in skipped:
            raise ScheduleError(f"`ignore` must name layers of the model, but got {name!r}, which is not one.")
    for name, plan in schedule.layers.items():
        if name in ignored or plan.method == "none" or plan.amount == 0:
            continue
        info = lookup.get(name)
        if info is None:
            if name in skipped:
                raise ScheduleError(f"layer {name!r} cannot be pruned: {skipped[name]}.")
            known = ", ".join(i.name for i in analysis.layers[:8])
            raise ScheduleError(
                f"layer {name!r} is not a prunable layer of this model; prunable layers include: {known}."
            )
        # Ignoring any layer of a group protects the whole group: it cannot lose channels
        # without that layer losing them too.
        if ignored & ({info.name, *info.members} | {w for w, _ in info.weights}):
            continue
        if info.name in resolved:
            raise ScheduleError(
                f"layers {planned_as[info.name]!r} and {name!r} belong to the same coupled group {info.name!r}; "
                "give one plan per group."
            )
        if plan.method not in info.methods:
            raise ScheduleError(
                f"method {plan.method!r} does not apply to layer {name!r} ({info.reason}); allowed: {list(info.methods)}."
            )
        if plan.method == "structured" and plan.amount > info.max_amount:
            raise ScheduleError(
                f"`amount <= {info.max_amount}` must hold for structured pruning of layer {name!r} "
                f"({info.channels} channels in groups of {info.channel_groups}), but got amount={plan.amount}."
            )
        resolved[info.name] = (info, plan)
        planned_as[info.name] = name
    return resolved


# ---------------------------------------------------------------------------- masks
def _restore_masks(params: list[tuple[nn.Module, str]]) -> None:
    # Structured surgery has sliced the (zero-carrying) weights; the zeros are the mask.
    for module, name in params:
        weight = getattr(module, name)
        prune.custom_from_mask(module, name, (weight != 0).to(weight.dtype))


def _zeros(module: nn.Module, name: str) -> int:
    mask = getattr(module, name + "_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


# ---------------------------------------------------------------------------- structured
class _PerLayerImportance:
    """Magnitude importance whose norm follows each group's LayerPlan."""

    def __init__(self, kind: str, norms: dict[nn.Module, int]) -> None:
        tp = torch_pruning()

        self.norms = norms
        self.kind = kind
        if kind == "random":
            self._by_p = {p: tp.importance.RandomImportance() for p in (1, 2)}
        elif kind == "lamp":
            self._by_p = {p: tp.importance.LAMPImportance(p=p) for p in (1, 2)}
        else:
            self._by_p = {p: tp.importance.MagnitudeImportance(p=p) for p in (1, 2)}

    def __call__(self, group: Any) -> torch.Tensor:
        p = 2
        for dep, _ in group:
            for m in (dep.source.module, dep.target.module):
                if m in self.norms:
                    p = self.norms[m]
                    break
            else:
                continue
            break
        score = self._by_p[p](group)
        if self.kind != "random":
            # Torch-Pruning's criteria skip layers it does not know (GPT-2's Conv1D).
            extra = _attention.conv1d_magnitude(group, p)
            if extra is not None and score is None:
                score = extra
            elif extra is not None and len(extra) == len(score):
                score = score + extra.to(score)
        return score


def _structured_step(
    model: nn.Module,
    example_inputs: Any,
    schedule: Schedule,
    targets: dict[str, tuple[int, int]],
    analysis: ModelAnalysis,
    heads: dict[str, int] | None = None,
    output: str | int | None = None,
) -> None:
    """Prune each structured group down to ``targets[name] = (keep, original)`` channels;
    the groups in ``heads`` (name -> heads to keep) lose whole attention heads instead."""
    heads = heads or {}
    norms: dict[nn.Module, int] = {}
    for name, plan in schedule.layers.items():
        try:
            norms[model.get_submodule(name)] = plan.norm
        except AttributeError:
            continue
    importance = _PerLayerImportance(schedule.importance, norms)
    layouts = _attention.find_attention(model)
    ratios: dict[nn.Module, float] = {}
    head_ratios: dict[nn.Module, float] = {}
    for name, (keep, _) in targets.items():
        module = model.get_submodule(name)
        current = _out_channels(module)
        if keep >= current:
            continue
        if name in heads and _is_mha_group(model, analysis, name):
            _prune_heads(model, example_inputs, name, heads[name], importance, output)
        elif name in heads:
            now = current * analysis.by_member()[name].heads // targets[name][1]
            # Torch-Pruning removes ceil(ratio * heads) heads: a hair below the exact count.
            head_ratios[module] = (now - heads[name] - 1e-6) / now
        else:
            # A hair above the exact keep so Torch-Pruning's int() truncation lands on `keep`.
            ratios[module] = 1.0 - (keep + 1e-6) / current
    output_layers = [
        model.get_submodule(i.name) for i in analysis.layers if "structured" not in i.methods and i.channels > 0
    ]
    if head_ratios:
        # Whole heads: the head ratio decides; the width ratio only has to be non-zero for
        # Torch-Pruning to visit the group, and head dims are left alone.
        _meta_prune(
            model,
            example_inputs,
            importance,
            dict(head_ratios),
            output_layers,
            layouts,
            output,
            head_ratios=head_ratios,
        )
        _attention.update_heads(layouts, whole_heads=True)
    if ratios:
        _meta_prune(model, example_inputs, importance, ratios, output_layers, layouts, output)
        _attention.update_heads(layouts, whole_heads=False)


def _meta_prune(
    model: nn.Module,
    example_inputs: Any,
    importance: _PerLayerImportance,
    ratios: dict[nn.Module, float],
    ignored: list[nn.Module],
    layouts: list[_attention.HeadLayout],
    output: str | int | None,
    head_ratios: dict[nn.Module, float] | None = None,
    global_ratio: tuple[float, float] | None = None,
) -> None:
    """One Torch-Pruning pass: per-group width ratios, or whole heads with ``head_ratios``;
    with ``global_ratio = (ratio, max ratio)``, Torch-Pruning's global pruning of every group
    not ignored instead (``ratios`` unused)."""
    tp = torch_pruning()

    num_heads: dict[nn.Module, int] = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    num_heads.update(_attention.num_heads_map(layouts))
    head_dict: dict[nn.Module, float] = {}
    for layout in layouts:
        for proj in layout.projections:
            if head_ratios and proj in head_ratios:
                head_dict.update({p: head_ratios[proj] for p in layout.projections})
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), _attention.per_head_parameters_frozen(model):
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")  # preflight lists them
            warnings.filterwarnings("ignore", message=r"\[Warning\] Unknown operation")
            pruner = tp.pruner.MetaPruner(
                model,
                example_inputs,
                importance=importance,
                pruning_ratio=0.0 if global_ratio is None else global_ratio[0],
                pruning_ratio_dict=None if global_ratio is not None else ratios,  # type: ignore[arg-type]
                global_pruning=global_ratio is not None,
                max_pruning_ratio=1.0 if global_ratio is None else global_ratio[1],
                ignored_layers=ignored,
                num_heads=num_heads,  # type: ignore[arg-type]
                prune_head_dims=not head_ratios,
                prune_num_heads=bool(head_ratios),
                head_pruning_ratio_dict=head_dict or None,  # type: ignore[arg-type]
                root_module_types=list(root_types(model)),
                **tracer_options(model, output),
            )
        with torch.enable_grad():
            pruner.step()
    finally:
        model.train(was_training)


def global_amounts(
    model: nn.Module,
    example_inputs: Any,
    ratio: float,
    units: dict[str, list[str]],
    *,
    max_amount: float = 0.9,
    output: str | int | None = None,
) -> dict[str, float]:
    """The structured amount of each unit that Torch-Pruning's global pruning picks at ``ratio``.

    What a person gets with ``MetaPruner(global_pruning=True, pruning_ratio=ratio)`` and L2
    magnitude importance (each group's scores normalised by their mean, then ranked across
    groups), with only the layers of ``units`` pruned; a unit's amount is capped at
    ``max_amount``. ``model`` is left untouched.

    Args:
        model: the model (not modified).
        example_inputs: inputs for tracing it.
        ratio: the global pruning ratio, in (0, 1).
        units: unit key -> the names of its layers (roots of the preflight's groups).
        max_amount: the most any unit may lose.
        output: the scored output (as in :func:`autoprune.prunable_layers`).

    Returns:
        unit key -> the fraction of the unit's channels removed (0 when none).
    """
    if not 0 < ratio < 1:
        raise ScheduleError(f"`ratio` must be in (0, 1), but got {ratio!r}.")
    pruned = copy.deepcopy(model)
    analysis = analyse(pruned, example_inputs, output=output)
    wanted = {name for names in units.values() for name in names}
    unknown = sorted(wanted - {i.name for i in analysis.layers})
    if unknown:
        raise ScheduleError(f"layer(s) {unknown[:5]} are not roots of prunable groups of this model.")
    before = {name: _out_channels(pruned.get_submodule(name)) for name in wanted}
    # everything outside the units keeps its width, the output layers included
    ignored = [pruned.get_submodule(i.name) for i in analysis.layers if i.name not in wanted]
    importance = _PerLayerImportance("magnitude", {})
    layouts = _attention.find_attention(pruned)
    make_permanent(pruned)  # a masked weight ranks by what it keeps
    _meta_prune(pruned, example_inputs, importance, {}, ignored, layouts, output, global_ratio=(ratio, max_amount))
    out: dict[str, float] = {}
    for key, names in units.items():
        total = sum(before[n] for n in names)
        kept = sum(_out_channels(pruned.get_submodule(n)) for n in names)
        # Torch-Pruning ranks every channel against one threshold, so a group can go past
        # the ratio cap within one step: the cap applies here.
        out[key] = min(max_amount, 1.0 - kept / total) if total else 0.0
    return out


def _is_mha_group(model: nn.Module, analysis: ModelAnalysis, name: str) -> bool:
    info = analysis.by_member()[name]
    return any(isinstance(model.get_submodule(m), nn.MultiheadAttention) for m in info.members)


def _prune_heads(
    model: nn.Module,
    example_inputs: Any,
    name: str,
    keep_heads: int,
    importance: _PerLayerImportance,
    output: str | int | None = None,
) -> None:
    """Remove whole heads from the attention layers of the group rooted at ``name``.

    ``nn.MultiheadAttention`` ties its inner width to the embedding, and head ``h`` owns the
    embedding channels ``h*head_dim ... (h+1)*head_dim`` (of q, k, v and of ``out_proj``'s
    input). Removing those channels from the coupled group removes head ``h`` from every
    attention layer of the group; the heads with the smallest summed channel importance go.
    """
    tp = torch_pruning()

    root = model.get_submodule(name)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.enable_grad(), _attention.per_head_parameters_frozen(model):
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, **tracer_options(model, output)
            )
        prune_fn = graph.get_pruner_of_module(root).prune_out_channels
        current = _out_channels(root)
        group = graph.get_pruning_group(root, prune_fn, idxs=list(range(current)))
        attentions = list(
            dict.fromkeys(d.target.module for d, _ in group if isinstance(d.target.module, nn.MultiheadAttention))
        )
        counts = {m.num_heads for m in attentions}
        if len(counts) != 1:
            raise ScheduleError(
                f"attention_heads=True needs one head count in the attention layers coupled with {name!r}, "
                f"but they have {sorted(counts)} heads"
            )
        n_heads = counts.pop()
        head_dim = current // n_heads
        remove = n_heads - keep_heads
        if remove <= 0:
            return
        scores = importance(group)
        head_scores = scores.detach().float().reshape(n_heads, head_dim).sum(dim=1)
        gone = sorted(torch.topk(head_scores, remove, largest=False).indices.tolist())
        idxs = [h * head_dim + j for h in gone for j in range(head_dim)]
        for attention in attentions:
            attention.num_heads = keep_heads  # Torch-Pruning derives head_dim from it
        graph.get_pruning_group(root, prune_fn, idxs=idxs).prune()
        for attention in attentions:
            assert attention.head_dim == head_dim and attention.embed_dim == keep_heads * head_dim
    finally:
        model.train(was_training)


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.MultiheadAttention):
        return int(module.embed_dim)
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    if not hasattr(module, "out_channels"):
        return _attention.projection_width(module)  # GPT-2's Conv1D
    return int(module.out_channels)  # type: ignore[arg-type]


def _keep_channels(original: int, amount: float, multiple: int) -> int:
    keep = round(original * (1.0 - amount))
    keep = max(multiple, int(round(keep / multiple)) * multiple)
    return min(keep, original)


# ---------------------------------------------------------------------------- unstructured
def _unstructured_step(model: nn.Module, schedule: Schedule, targets: dict[str, tuple[LayerInfo, float]]) -> None:
    """Zero weights until each unstructured entry reaches its cumulative amount."""
    wanted: list[tuple[nn.Module, str, int]] = []
    for info, amount in targets.values():
        for layer, pname in info.weights:
            module = model.get_submodule(layer)
            orig = getattr(module, pname + "_orig", None)
            if orig is not None:
                # The masked `weight` attribute is only recomputed by a forward pass; after
                # fine-tuning it is stale, and torch's pruning ranks by it. Refresh it so the
                # ranking never depends on whether someone ran the model in between.
                setattr(module, pname, orig * getattr(module, pname + "_mask"))
            numel = getattr(module, pname).numel()
            wanted.append((module, pname, round(amount * numel)))
    if schedule.global_unstructured and wanted:
        extra = sum(w for _, _, w in wanted) - sum(_zeros(m, p) for m, p, _ in wanted)
        if extra > 0:
            prune.global_unstructured([(m, p) for m, p, _ in wanted], pruning_method=L1Unstructured, amount=extra)
        return
    for module, pname, target in wanted:
        extra = target - _zeros(module, pname)
        if extra > 0:
            L1Unstructured.apply(module, pname, amount=extra)


# ---------------------------------------------------------------------------- entry point
def apply_schedule(
    model: nn.Module,
    schedule: Schedule,
    *,
    example_inputs: Any,
    fine_tune: FineTune | None = None,
    on_step: StepCallback | None = None,
    output: str | int | None = None,
    calibration: Sequence[Any] | None = None,
) -> nn.Module:
    """Return a pruned copy of ``model`` following ``schedule``; ``model`` is left untouched.

    Each of ``schedule.steps`` steps prunes up to that step's cumulative amount (from the
    schedule's shape) and then calls ``fine_tune(model, schedule.fine_tune_steps)``, with
    unstructured masks in place, so zeroed weights stay zero while the rest trains.

    Args:
        model: the model to prune (not modified).
        schedule: what to prune and how.
        example_inputs: inputs for tracing the model: a tensor, a tuple of tensors or a dict
            of keyword arguments (a tokenizer's ``input_ids`` and ``attention_mask``).
        fine_tune: ``fine_tune(model, steps)``, called after every pruning step when
            ``schedule.fine_tune_steps > 0`` (a warning says so when it is 0).
        on_step: called with ``(model, step, steps)`` after each step; may raise to stop.
        output: the scored output of a model returning a dict, ``ModelOutput`` or tuple
            (as in :func:`autoprune.prunable_layers`); the graph is traced from it.
        calibration: batches of model inputs for the calibration criteria (``wanda``,
            ``sparsegpt``; a task's ``calibration_inputs``). A schedule with such a criterion
            or an N:M pattern prunes linear layers only (:mod:`autoprune.oneshot`), without
            tracing the model.

    Example:
        >>> import autoprune as ap
        >>> from autoprune.testing import models as zoo
        >>> model, x = zoo.get_model("cnn")
        >>> plan = ap.Schedule(layers={"features.0.0": ap.LayerPlan("structured", 0.5)})
        >>> ap.apply_schedule(model, plan, example_inputs=x).features[0][0].out_channels
        32
    """
    if not isinstance(schedule, Schedule):
        raise ScheduleError(f"`schedule` must be an autoprune.Schedule, but got {type(schedule).__name__}.")
    if is_decoder_structure(schedule, model):
        return apply_decoder_structure(model, schedule, calibration, fine_tune, on_step)
    if is_linear_oneshot(schedule, model):
        return apply_linear_oneshot(model, schedule, calibration, fine_tune, on_step)
    pruned = copy.deepcopy(model)
    analysis = analyse(pruned, example_inputs, output=output)
    plans = resolve_plans(schedule, analysis)
    if fine_tune is None and schedule.fine_tune_steps > 0 and schedule.steps > 1:
        _logger.warning(
            "the schedule asks for %d fine-tuning steps but no fine_tune was given", schedule.fine_tune_steps
        )
    if fine_tune is not None and schedule.fine_tune_steps == 0:
        warnings.warn(
            "apply_schedule got a fine_tune, but the schedule's fine_tune_steps is 0, so it is never called; "
            "set Schedule(fine_tune_steps=...) to fine-tune between pruning steps",
            UserWarning,
            stacklevel=2,
        )
    # The seed drives random importance and tie breaks; fork so the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(schedule.seed)
        _run_steps(pruned, schedule, plans, analysis, example_inputs, fine_tune, on_step, output)
    return pruned


def _run_steps(
    pruned: nn.Module,
    schedule: Schedule,
    plans: dict[str, tuple[LayerInfo, LayerPlan]],
    analysis: ModelAnalysis,
    example_inputs: Any,
    fine_tune: FineTune | None,
    on_step: StepCallback | None,
    output: str | int | None = None,
) -> None:
    originals = {name: info.channels for name, (info, _) in plans.items()}
    for step in range(1, schedule.steps + 1):
        structured: dict[str, tuple[int, int]] = {}
        whole_heads: dict[str, int] = {}
        unstructured: dict[str, tuple[LayerInfo, float]] = {}
        for name, (info, plan) in plans.items():
            # `name` is the entry's root, which need not be the layer the plan was keyed by.
            amount = step_amounts(plan.amount, schedule.steps, schedule.shape)[step - 1]
            if plan.method == "structured" and schedule.attention_heads and info.heads > 0:
                keep_heads = max(1, round(info.heads * (1.0 - amount)))
                whole_heads[name] = keep_heads
                structured[name] = (keep_heads * (originals[name] // info.heads), originals[name])
            elif plan.method == "structured":
                multiple = info.channel_groups * (schedule.round_to or 1)
                structured[name] = (_keep_channels(originals[name], amount, multiple), originals[name])
            else:
                unstructured[name] = (info, amount)
        if any(keep < _out_channels(pruned.get_submodule(n)) for n, (keep, _) in structured.items()):
            masked = make_permanent(pruned)
            _structured_step(pruned, example_inputs, schedule, structured, analysis, whole_heads, output)
            _restore_masks(masked)
        _unstructured_step(pruned, schedule, unstructured)
        if fine_tune is not None and schedule.fine_tune_steps > 0:
            fine_tune(pruned, schedule.fine_tune_steps)
        _logger.debug("pruning step %d/%d done", step, schedule.steps)
        if on_step is not None:
            on_step(pruned, step, schedule.steps)
    make_permanent(pruned)
