"""Where autoprune keeps files of its own: a neutral helper that every stage may import."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir"]

CACHE_ENV = "AUTOPRUNE_CACHE_DIR"


def cache_dir() -> Path:
    """Where trained task models and shared latency caches are kept
    (``$AUTOPRUNE_CACHE_DIR`` or ``~/.cache/autoprune``)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "autoprune"
    return Path(root)
