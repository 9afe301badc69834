"""Example inputs and model outputs: calling a model, picking the output that is scored,
resizing a batch, moving and casting tensors. A neutral helper: every stage may import it.

Example inputs follow Torch-Pruning's convention: a tensor is passed as ``model(x)``, a tuple
or list as ``model(*x)``, a dict as ``model(**x)``. The batch dimension is the first
dimension of every tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["call_model", "select_output", "map_tensors", "resize_batch", "to_target", "input_signature"]


def call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def select_output(output: Any, key: str | int | None = None) -> torch.Tensor:
    """The tensor that is scored from what a model returned.

    ``key`` names it: a dict key or attribute (``"logits"`` of a Hugging Face ``ModelOutput``)
    or a position in a tuple/list. With ``key=None``: a tensor is itself; a mapping or
    ``ModelOutput`` gives ``"logits"`` when it has one, else its first tensor; a tuple or list
    gives its first tensor.

    Raises:
        ValueError: ``key`` names nothing in the output, or the output holds no tensor.
    """
    if isinstance(output, torch.Tensor) and key is None:
        return output
    if key is not None:
        found: Any = None
        if isinstance(key, int) and isinstance(output, (tuple, list)):
            found = output[key] if -len(output) <= key < len(output) else None
        elif isinstance(key, str):
            if isinstance(output, dict) or hasattr(output, "keys"):
                found = output.get(key) if hasattr(output, "get") else None
            if found is None:
                found = getattr(output, key, None)
        if not isinstance(found, torch.Tensor):
            raise ValueError(f"output {key!r} is not a tensor in the model's output of type {type(output).__name__}")
        return found
    if hasattr(output, "keys") and hasattr(output, "get"):  # dict or transformers.ModelOutput
        logits = output.get("logits")
        if isinstance(logits, torch.Tensor):
            return logits
        values = [output[k] for k in output.keys()]
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        values = []
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise ValueError(f"the model's output of type {type(output).__name__} holds no tensor to score")


def map_tensors(inputs: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor in a nest of tuples, lists and dicts."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, dict):
        return {k: map_tensors(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(map_tensors(v, fn) for v in inputs)
    return inputs


def _resize(t: torch.Tensor, n: int) -> torch.Tensor:
    if t.dim() == 0 or t.shape[0] == n:
        return t
    if t.shape[0] > n:
        return t[:n]
    reps = -(-n // t.shape[0])
    return t.repeat(reps, *([1] * (t.dim() - 1)))[:n]


def resize_batch(inputs: Any, batch_size: int | None) -> Any:
    """Repeat or truncate every tensor along its first dimension to ``batch_size`` rows."""
    if batch_size is None:
        return inputs
    return map_tensors(inputs, lambda t: _resize(t, batch_size))


def to_target(inputs: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors to ``device``; floating tensors are also cast to ``dtype`` (ids stay ints)."""
    return map_tensors(inputs, lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype))


def input_signature(inputs: Any, batch_size: int | None = None) -> str:
    """Shapes and dtypes of the inputs after :func:`resize_batch`, for cache keys (values do not matter)."""
    parts: list[str] = []

    def describe(t: torch.Tensor) -> None:
        shape = list(t.shape)
        if batch_size is not None and shape:
            shape[0] = batch_size
        parts.append(f"{tuple(shape)}:{t.dtype}")

    map_tensors(inputs, describe)
    return ";".join(parts) if parts else type(inputs).__name__
