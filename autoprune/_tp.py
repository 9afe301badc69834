"""Torch-Pruning, imported without the timm import it makes for its own operation counter:
a neutral helper that every stage may import.

Torch-Pruning's ``utils/op_counter.py`` imports timm (and with it torchvision: about two
seconds of every process that prunes) only to count the operations of timm's attention in
``count_ops_and_params``, which autoprune never calls (MACs come from torch's FLOP counter).
When timm is not loaded yet, it is hidden for the length of Torch-Pruning's import; a model
from timm has loaded timm already, and Torch-Pruning then finds it as usual.
"""

from __future__ import annotations

import importlib
import sys
import threading
from typing import Any

__all__ = ["torch_pruning"]

_LOCK = threading.Lock()


def torch_pruning() -> Any:
    """The ``torch_pruning`` module (imported on first call)."""
    loaded = sys.modules.get("torch_pruning")
    if loaded is not None:
        return loaded
    with _LOCK:
        if "timm" in sys.modules:
            return importlib.import_module("torch_pruning")
        sys.modules["timm"] = None  # type: ignore[assignment]  # `import timm` raises ImportError
        try:
            return importlib.import_module("torch_pruning")
        finally:
            if "timm" in sys.modules and sys.modules["timm"] is None:
                del sys.modules["timm"]
