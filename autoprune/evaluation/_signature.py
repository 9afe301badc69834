"""What decides a model's latency on a target, as a hash: the key of the latency cache and
of a speedup's reference (:func:`architecture_signature`)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from autoprune._inputs import input_signature
from autoprune.evaluation._backends import get_backend
from autoprune.evaluation._target import Target

__all__ = ["architecture_signature"]


def architecture_signature(model: nn.Module, target: str | Target, example_inputs: Any = None) -> str:
    """A hash of what decides a model's latency on a target, and nothing else.

    It covers each module's name, type and ``extra_repr()`` (channels, kernel sizes,
    strides, groups, ...), the shapes and dtypes of its parameters and buffers, the shapes
    and dtypes of the inputs (after resizing to the target's batch size), the target's text
    form, the backend's :meth:`~LatencyBackend.signature`, the torch version and the
    bytecode of each user-defined module class's ``forward``. Weight
    values are not part of it: two models that differ only in their weights (or in where
    their unstructured zeros are) get the same signature; structured pruning changes it.
    """
    target = Target.parse(target)
    h = hashlib.sha256()

    def add(text: str) -> None:
        h.update(text.encode())
        h.update(b"\n")

    add(f"torch={torch.__version__};target={target}")
    seen: set[type] = set()
    for name, module in model.named_modules():
        add(f"{name}:{type(module).__module__}.{type(module).__qualname__}({module.extra_repr()})")
        if type(module) not in seen:
            seen.add(type(module))
            add(" forward=" + _forward_code(type(module)))
        if hasattr(module, "num_heads"):  # attention modules have no extra_repr
            add(f" heads={module.num_heads}")
        for pname, p in module.named_parameters(recurse=False):
            add(f" p {pname}{tuple(p.shape)}:{p.dtype}")
        for bname, b in module.named_buffers(recurse=False):
            add(f" b {bname}{tuple(b.shape)}:{b.dtype}")
    if example_inputs is not None:
        add("inputs=" + input_signature(example_inputs, target.batch_size))
    add("backend=" + get_backend(target.backend).signature(model))
    return h.hexdigest()


def _forward_code(cls: type) -> str:
    """What a module class computes: a hash of its ``forward``'s bytecode and constants, so
    two model classes with the same name and layers but different forward code (a cache file
    shared by several studies) never share a latency. Torch's own modules are named by
    the torch version already."""
    if cls.__module__.startswith("torch."):
        return "torch"
    code = getattr(getattr(cls, "forward", None), "__code__", None)
    if code is None:
        return "?"
    h = hashlib.sha256()
    _hash_code(code, h)
    return h.hexdigest()[:16]


def _hash_code(code: Any, h: Any) -> None:
    """Hash a code object the same way in every process (no addresses, no set order)."""
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if hasattr(const, "co_code"):  # nested function or comprehension
            _hash_code(const, h)
        elif isinstance(const, frozenset):
            h.update(repr(sorted(map(repr, const))).encode())
        else:
            h.update(repr(const).encode())
