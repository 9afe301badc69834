"""The preflight's promise, checked: every prunable group with the largest amount that the
executor's surgery survives (:func:`prunable_layers`, ``ap.prunable_layers``).

:func:`autoprune.preflight.analyse` reads the dependency graph; here each structured group
is cut to its largest safe amount on a copy by :func:`autoprune.executor.apply_schedule`
(the surgery being checked), and a group whose surgery fails is offered for unstructured
pruning only. It sits above the executor so that the executor never imports it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from autoprune._inputs import call_model, select_output
from autoprune.decoder import StructureError, allowed_head_amounts, decoder_layout
from autoprune.executor import apply_schedule
from autoprune.oneshot import prunable_linears
from autoprune.preflight import LayerInfo, ModelAnalysis, analyse
from autoprune.schedule import LayerPlan, Schedule

__all__ = ["prunable_layers"]

_logger = logging.getLogger(__name__)


def _surgery_error(
    model: nn.Module, example_inputs: Any, units: list[LayerInfo], output: str | int | None
) -> str | None:
    """Why pruning ``units`` at their largest safe amounts fails on a copy (None: it runs)."""
    schedule = Schedule(layers={i.name: LayerPlan("structured", i.max_amount) for i in units})
    try:
        with torch.no_grad():
            expected = select_output(call_model(model, example_inputs), output).shape
        pruned = apply_schedule(model, schedule, example_inputs=example_inputs, output=output)
        with torch.no_grad():
            shape = select_output(call_model(pruned, example_inputs), output).shape
    except Exception as exc:  # noqa: BLE001 - any failure of the surgery means the same here
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None if shape == expected else f"the output's shape changes from {tuple(expected)} to {tuple(shape)}"


def _keep_promises(model: nn.Module, example_inputs: Any, analysis: ModelAnalysis, output: str | int | None) -> None:
    """Check that every structured unit at its ``max_amount`` gives a model that runs.

    Torch-Pruning's index mapping goes wrong on some layouts (timm's Swin patch merging,
    torchvision's MaxViT); the largest safe amount is a promise, so all units are cut at once
    on a copy, and when that fails each unit alone: the units whose surgery fails are
    offered for unstructured pruning only, with the error as the reason.
    """
    units = [i for i in analysis.layers if "structured" in i.methods]
    was_training = model.training
    model.eval()  # running the model in training mode would move its BatchNorm statistics
    try:
        together = _surgery_error(model, example_inputs, units, output) if units else None
        if together is None:
            return
        alone = {u.name: _surgery_error(model, example_inputs, [u], output) for u in units[:2]}
        if len(units) > 2 and set(alone.values()) == {together}:
            # The first two fail alone just as all do together: the model, not a group, fails.
            failing = {u.name: f"Torch-Pruning's surgery fails on this model ({together})" for u in units}
        else:
            for u in units[2:]:
                alone[u.name] = _surgery_error(model, example_inputs, [u], output)
            failing = {n: f"Torch-Pruning's surgery of this group fails ({e})" for n, e in alone.items() if e}
        for k, info in enumerate(analysis.layers):
            if info.name in failing:
                _logger.warning("%s: %s; offered for unstructured pruning only", info.name, failing[info.name])
                analysis.layers[k] = dataclasses.replace(
                    info, methods=("unstructured",), max_amount=0.99, reason=failing[info.name]
                )
    finally:
        model.train(was_training)


def prunable_layers(model: nn.Module, example_inputs: Any, *, output: str | int | None = None) -> list[LayerInfo]:
    """List each prunable layer or coupled group with its methods and largest safe amount.

    Layers that cannot be pruned structurally appear with ``methods == ("unstructured",)``
    and the reason; parameters that cannot be pruned at all appear with empty ``methods``.
    A model Torch-Pruning cannot trace is offered for unstructured pruning only. The largest
    safe amounts are checked: all structured units are cut to them at once on a copy, which
    must run (a unit whose surgery fails is offered for unstructured pruning only).

    Args:
        model: the model (left as it was).
        example_inputs: a tensor (``model(x)``), a tuple (``model(*x)``) or a dict
            (``model(**x)``, e.g. a tokenizer's ``input_ids`` and ``attention_mask``).
        output: which output is scored when the model returns a dict, ``ModelOutput`` or
            tuple (see :func:`autoprune._inputs.select_output`; default ``logits`` or the
            first tensor); it must be there. The graph is traced from every returned tensor,
            whose widths therefore stay.

    Example:
        >>> import autoprune as ap
        >>> from autoprune.testing import models as zoo
        >>> model, x = zoo.get_model("cnn")
        >>> [i.name for i in ap.prunable_layers(model, x)][:2]
        ['features.0.0', 'features.1.0']
    """
    try:
        return _decoder_layers(model)
    except StructureError:
        pass  # not a decoder this module knows: trace it
    analysis = analyse(model, example_inputs, output=output)
    _keep_promises(model, example_inputs, analysis, output)
    skipped = [
        LayerInfo(
            name=n,
            type="",
            members=(n,),
            weights=(),
            channels=0,
            channel_groups=1,
            params=0,
            methods=(),
            max_amount=0.0,
            reason=r,
        )
        for n, r in analysis.skipped
    ]
    return analysis.layers + skipped


def _decoder_layers(model: nn.Module) -> list[LayerInfo]:
    """A decoder language model's units, read from its layout without tracing (tracing a
    Llama with Torch-Pruning takes minutes): per block its attention (query heads, grouped-
    query attention kept valid) and its MLP (channels), structured; every linear layer,
    unstructured. Blocks are removed whole with ``Schedule(remove_blocks=...)``."""
    layout = decoder_layout(model)
    linears = prunable_linears(model)
    found: list[LayerInfo] = []

    def weights(names: list[str]) -> tuple[tuple[str, str], ...]:
        return tuple((n, "weight") for n in names)

    def params(names: list[str]) -> int:
        total = 0
        for n in names:
            weight = model.get_submodule(n).weight
            assert isinstance(weight, torch.Tensor)
            total += weight.numel()
        return total

    for block, shape in zip(layout.block_names(model), layout.shapes(model), strict=True):
        attention, mlp = layout.attention_name(block), layout.mlp_name(block)
        inside = [n for n in linears if n.startswith(block + ".")]
        attn_layers = [n for n in inside if n.startswith(attention + ".")]
        mlp_layers = [n for n in inside if n.startswith(mlp + ".")]
        heads_type = type(model.get_submodule(attention)).__name__
        found.append(LayerInfo(name=attention, type=heads_type, members=tuple(attn_layers),
                               weights=weights(attn_layers), channels=shape.heads * shape.head_dim,
                               channel_groups=shape.head_dim, params=params(attn_layers), methods=("structured",),
                               max_amount=max(allowed_head_amounts(shape)), heads=shape.heads))  # fmt: skip
        found.append(LayerInfo(name=mlp, type=type(model.get_submodule(mlp)).__name__, members=tuple(mlp_layers),
                               weights=weights(mlp_layers), channels=shape.intermediate, channel_groups=1,
                               params=params(mlp_layers), methods=("structured",),
                               max_amount=(shape.intermediate - 1) / shape.intermediate))  # fmt: skip
        for name in inside:
            module = model.get_submodule(name)
            found.append(LayerInfo(name=name, type=type(module).__name__, members=(name,), weights=weights([name]),
                                   channels=0, channel_groups=1, params=params([name]), methods=("unstructured",),
                                   max_amount=0.99, reason="a projection of a decoder block: cut structurally through "
                                   f"{attention!r} or {mlp!r}"))  # fmt: skip
    return found
