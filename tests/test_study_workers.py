"""Local worker processes: the parent covers their start-up with the machine lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from autoprune._lock import machine_lock
from autoprune.study._workers import run_in_workers, wait_until_ready


def test_worker_start_up_holds_measurements_until_workers_are_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # worker processes import torch before they can mark themselves busy; the parent covers
    # that time, so no worker measures latency through another's start-up
    monkeypatch.setenv("AUTOPRUNE_LATENCY_LOCK", str(tmp_path / "latency.lock"))
    ready_dir = tmp_path / "ready"
    ready_dir.mkdir()
    covering, measured = threading.Event(), threading.Event()
    ready: list[bool] = []

    def cover() -> None:  # what run_in_workers does while its workers start
        with machine_lock().busy():
            covering.set()
            ready.append(wait_until_ready(ready_dir, 2, timeout=30))

    def measure() -> None:
        covering.wait()
        with machine_lock().measuring():
            measured.set()

    threads = [threading.Thread(target=cover), threading.Thread(target=measure)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    assert covering.is_set() and not measured.is_set()
    (ready_dir / "1").touch()
    time.sleep(0.5)
    assert not measured.is_set()  # one of two workers is still starting
    (ready_dir / "2").touch()
    for thread in threads:
        thread.join(timeout=30)
    assert measured.is_set() and ready == [True]
    assert wait_until_ready(tmp_path / "ready", 3, timeout=0.2) is False  # a worker that never starts


def _pid_and_threads() -> tuple[int, int]:
    import os

    import torch

    return os.getpid(), torch.get_num_threads()


def test_run_in_workers_runs_each_call_in_a_warmed_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("AUTOPRUNE_LATENCY_LOCK", str(tmp_path / "latency.lock"))
    results = run_in_workers(_pid_and_threads, [(), ()], threads=1, lock=machine_lock())
    assert len(results) == 2
    assert all(pid != os.getpid() for pid, _ in results)
    assert all(threads == 1 for _, threads in results)  # set by the initializer
