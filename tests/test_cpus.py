"""The cores a process may use: what a CPU target without a thread count times with."""

from __future__ import annotations

import os

import pytest

import autoprune as ap
from autoprune._cpus import usable_cpus
from autoprune.study._setup import study_target


def test_a_cpu_target_without_threads_uses_the_cores_the_process_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)  # as under `taskset -c 3`
    assert usable_cpus() == 1
    assert study_target(ap.SearchConfig(target="cpu")).threads == 1
    assert study_target(ap.SearchConfig(target="cpu:threads=4")).threads == 4  # named: kept
    monkeypatch.delattr(os, "sched_getaffinity")  # no affinity call (macOS, Windows)
    assert usable_cpus() == 64
