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


def sqlite_folder_made(storage: object) -> None:
    """Create the folder of a ``sqlite:///path`` storage (as the CLI does), or say why not."""
    from autoprune._errors import ConfigError

    if isinstance(storage, str) and storage.startswith("sqlite:///"):
        folder = Path(storage[len("sqlite:///") :]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(
                f"cannot create the folder of storage {storage!r}: {str(folder)!r} or a folder above it is a file"
            ) from None
