"""Local worker processes: a pool warmed by an initializer and closed by a ``with`` block.

A new worker process imports torch and autoprune before any code of ours runs in it: a
few seconds of full CPU that it cannot yet mark as busy itself, and a worker that started
faster would measure latency right through them. So the parent holds the machine lock busy
for the workers until each one's initializer has said it is past its imports (a file in a
ready folder), or ``timeout`` seconds (a worker that failed to start). Leaving the block
stops the workers and waits for them to exit, while nothing measures.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoprune._lock import MachineLock

__all__ = ["run_in_workers", "wait_until_ready"]


def _warm(ready_dir: str, threads: int, module: str) -> None:
    """The initializer of each worker: its imports (the module of the function it will run:
    the start-up work the parent covers), its thread count, then "ready"."""
    import torch

    importlib.import_module(module)
    torch.set_num_threads(max(1, threads))
    Path(ready_dir, str(os.getpid())).touch()


def wait_until_ready(ready_dir: str | os.PathLike[str], workers: int, timeout: float) -> bool:
    """Wait until ``workers`` files are in ``ready_dir`` (False after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while len(os.listdir(ready_dir)) < workers:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def run_in_workers(
    fn: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    *,
    threads: int,
    lock: MachineLock,
    timeout: float = 300.0,
) -> list[Any]:
    """``[fn(*args) for args in calls]``, each call in a worker process of its own."""
    from joblib.externals.loky import ProcessPoolExecutor

    with (
        tempfile.TemporaryDirectory(prefix="autoprune-workers-") as ready_dir,
        ProcessPoolExecutor(max_workers=len(calls), initializer=_warm,
                            initargs=(ready_dir, threads, fn.__module__)) as pool,
    ):
        with lock.busy():  # the workers' start-up is busy work nobody may measure through
            futures = [pool.submit(fn, *args) for args in calls]
            wait_until_ready(ready_dir, len(calls), timeout)
        return [f.result() for f in futures]
