"""Where autoprune keeps files of its own: a neutral helper that every stage may import."""

from __future__ import annotations

import os
from pathlib import Path

from autoprune._errors import ConfigError

__all__ = ["CACHE_ENV", "SQLITE_PREFIX", "cache_dir", "sqlite_folder_made", "sqlite_path"]

CACHE_ENV = "AUTOPRUNE_CACHE_DIR"


def cache_dir() -> Path:
    """Where trained task models and shared latency caches are kept
    (``$AUTOPRUNE_CACHE_DIR`` or ``~/.cache/autoprune``)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "autoprune"
    return Path(root)


SQLITE_PREFIX = "sqlite:///"


def sqlite_path(storage: object) -> Path | None:
    """The file of a ``sqlite:///path`` storage URL; None for other storages, a bare path and
    in-memory SQLite. The one place a SQLite URL is taken apart."""
    if not isinstance(storage, str) or not storage.startswith(SQLITE_PREFIX):
        return None
    path = storage[len(SQLITE_PREFIX) :]
    return None if path in ("", ":memory:") or path.startswith(":memory:") else Path(path)


def sqlite_folder_made(storage: object) -> None:
    """Create the folder of a ``sqlite:///path`` storage (as the CLI does), or say why not."""
    path = sqlite_path(storage)
    if path is not None:
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(
                f"cannot create the folder of storage {storage!r}: {str(folder)!r} or a folder above it is a file"
            ) from None
