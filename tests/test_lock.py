"""The machine lock: busy blocks, exclusive measurements and training-step boundaries.

(measure_latency's use of it is tested in tests/evaluation/test_evaluate.py.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from autoprune._lock import LOCK_ENV, machine_lock


@pytest.fixture(autouse=True)
def _private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "latency.lock"
    monkeypatch.setenv(LOCK_ENV, str(path))
    return path


def _measure_when(start: threading.Event, done: threading.Event) -> None:
    start.wait()
    with machine_lock().measuring():
        done.set()


def test_one_lock_object_per_path_and_process(tmp_path: Path) -> None:
    assert machine_lock() is machine_lock()
    assert machine_lock(tmp_path / "other.lock") is not machine_lock()


def test_a_measurement_waits_for_busy_work_and_a_step_lets_it_in() -> None:
    lock = machine_lock()
    start, done = threading.Event(), threading.Event()
    measurer = threading.Thread(target=_measure_when, args=(start, done))
    measurer.start()
    with lock.busy():
        start.set()
        time.sleep(0.4)
        assert not done.is_set()  # busy: the measurement waits
        waited = lock.step()  # a training-step boundary: the pending measurement goes first
        assert done.is_set() and waited >= 0.0
    measurer.join(timeout=30)


def test_measuring_inside_busy_lets_go_and_takes_busy_again() -> None:
    lock = machine_lock()
    with lock.busy():
        with lock.busy() as nested:  # reentrant: nothing to wait for
            assert nested == 0.0
        with lock.measuring() as waited:  # its own busy block does not make it wait
            assert waited < 1.0
            with lock.busy() as inside:  # busy work inside this thread's own measurement
                assert inside == 0.0
        start, done = threading.Event(), threading.Event()
        measurer = threading.Thread(target=_measure_when, args=(start, done))
        measurer.start()
        start.set()
        time.sleep(0.4)
        assert not done.is_set()  # busy again after the measurement
    measurer.join(timeout=30)
    assert done.is_set()
