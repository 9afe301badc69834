"""Example inputs: calling a model with them, resizing their batch, moving and casting them.

Example inputs follow Torch-Pruning's convention: a tensor is passed as ``model(x)``, a tuple
or list as ``model(*x)``, a dict as ``model(**x)``. The batch dimension is the first
dimension of every tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["call_model", "map_tensors", "resize_batch", "to_target", "input_signature"]


def call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


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
