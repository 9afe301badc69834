"""Local worker processes: the parent covers their start-up with the machine lock."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoprune._lock import machine_lock
from autoprune.study import _workers
from autoprune.study._workers import run_in_workers, wait_until_ready


def _started_at() -> float:
    return time.time()


@pytest.mark.slow  # starts worker processes, each importing torch
def test_worker_start_up_holds_measurements_until_workers_are_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worker processes import torch before they can mark themselves busy; run_in_workers
    # covers that time, so no measurement runs through another worker's start-up. The real
    # run_in_workers starts two workers while another thread asks to measure: the
    # measurement must wait until both workers' initializers are done.
    monkeypatch.setenv("AUTOPRUNE_LATENCY_LOCK", str(tmp_path / "latency.lock"))
    ready_dir = tmp_path / "ready"

    @contextlib.contextmanager
    def kept_ready_dir(*args: object, **kwargs: object) -> Iterator[str]:
        ready_dir.mkdir()
        yield str(ready_dir)  # kept afterwards: each worker's file says when it was ready

    monkeypatch.setattr(_workers.tempfile, "TemporaryDirectory", kept_ready_dir)
    lock = machine_lock()
    covering = threading.Event()
    real_busy = lock.busy

    @contextlib.contextmanager
    def busy() -> Iterator[float]:
        with real_busy() as waited:
            covering.set()
            yield waited

    monkeypatch.setattr(lock, "busy", busy)
    measured_at: list[float] = []
    results: list[list[float]] = []

    def measure() -> None:
        covering.wait(timeout=10)
        with machine_lock().measuring():
            measured_at.append(time.time())

    parent = threading.Thread(target=lambda: results.append(run_in_workers(_started_at, [(), ()], threads=1, lock=lock)))
    measurer = threading.Thread(target=measure)
    parent.start()
    measurer.start()
    for thread in (parent, measurer):
        thread.join(timeout=300)
    assert covering.is_set(), "run_in_workers never held the lock busy while its workers started"
    assert len(results) == 1 and len(results[0]) == 2 and len(measured_at) == 1
    ready = [p.stat().st_mtime for p in ready_dir.iterdir()]
    assert len(ready) == 2  # both workers ran their initializer
    # File times come from a coarse kernel clock (never later than time.time() at the touch):
    # a measurement granted before a worker was ready would be seconds early (its imports).
    assert measured_at[0] >= max(ready), (measured_at[0], sorted(ready))


def test_wait_until_ready_counts_files_and_gives_up(tmp_path: Path) -> None:
    (tmp_path / "1").touch()
    assert wait_until_ready(tmp_path, 1, timeout=0.2) is True
    start = time.monotonic()
    assert wait_until_ready(tmp_path, 2, timeout=0.3) is False  # a worker that never starts
    assert 0.3 <= time.monotonic() - start < 5


def _pid_and_threads() -> tuple[int, int]:
    import torch

    return os.getpid(), torch.get_num_threads()


@pytest.mark.slow  # starts worker processes, each importing torch
def test_run_in_workers_runs_each_call_in_a_warmed_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPRUNE_LATENCY_LOCK", str(tmp_path / "latency.lock"))
    results = run_in_workers(_pid_and_threads, [(), ()], threads=1, lock=machine_lock())
    assert len(results) == 2
    assert all(pid != os.getpid() for pid, _ in results)
    assert all(threads == 1 for _, threads in results)  # set by the initializer
