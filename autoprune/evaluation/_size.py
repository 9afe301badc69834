"""Model size: parameter counts and bytes stored dense and sparse.

Bytes are counted over the model's ``state_dict`` (parameters and buffers; a tensor shared
under several names counts once). Every tensor counts at its own element size, as it would
be stored: 4 bytes a value in float32, 2 in float16 and bfloat16, 1 in int8 (cast a model
with ``model.half()`` to see its half-precision size). For one tensor with ``n`` elements of which ``z`` are nonzero, value size
``v`` bytes:

- dense: ``n * v``
- bitmask + values: ``ceil(n / 8) + z * v``
- CSR, the tensor seen as a ``rows x cols`` matrix (``rows`` = first dimension; 1 for a
  vector): ``z * v`` values + ``z * c`` column indices + ``(rows + 1) * r`` row pointers,
  where ``c`` and ``r`` are the fewest bytes (1, 2, 4 or 8) of an unsigned integer that
  holds ``cols - 1`` and ``z``.
- sparse: ``min(dense, bitmask, CSR)``; so a tensor without zeros costs its dense size and
  no tensor ever costs more than dense.

This makes unstructured pruning pay in size: a 90%-zero fp32 weight matrix stores in about
13% of its dense bytes (the bitmask wins); at 99% zeros CSR wins.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["size_stats", "tensor_bytes"]


def _index_bytes(max_value: int) -> int:
    for size in (1, 2, 4):
        if max_value < 256**size:
            return size
    return 8


def tensor_bytes(t: torch.Tensor) -> tuple[int, int]:
    """``(dense_bytes, sparse_bytes)`` of one tensor by the formulas of this module."""
    n = t.numel()
    v = t.element_size()
    dense = n * v
    if n == 0:
        return 0, 0
    z = int(torch.count_nonzero(t.detach()))
    if z == n:
        return dense, dense
    bitmask = math.ceil(n / 8) + z * v
    rows = t.shape[0] if t.dim() >= 2 else 1
    cols = n // rows
    csr = z * v + z * _index_bytes(max(cols - 1, 0)) + (rows + 1) * _index_bytes(z)
    return dense, min(dense, bitmask, csr)


def size_stats(model: nn.Module) -> dict[str, int]:
    """Parameter counts and storage bytes of a model.

    Returns:
        ``params`` (parameter elements, zero or not), ``nonzero_params``, ``dense_bytes``
        and ``sparse_bytes`` (see the module docs for the formulas).

    Example:
        >>> size_stats(nn.Linear(10, 2))
        {'params': 22, 'nonzero_params': 22, 'dense_bytes': 88, 'sparse_bytes': 88}
    """
    with torch.no_grad():
        params = sum(p.numel() for p in model.parameters())
        nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
        dense = sparse = 0
        seen: set[tuple[object, ...]] = set()
        for t in model.state_dict(keep_vars=True).values():
            if not isinstance(t, torch.Tensor):
                continue
            key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            if t.numel() and key in seen:
                continue
            seen.add(key)
            d, s = tensor_bytes(t)
            dense += d
            sparse += s
    return {"params": params, "nonzero_params": nonzero, "dense_bytes": dense, "sparse_bytes": sparse}
