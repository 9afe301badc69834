"""Shared fixtures. Every test writes under tmp_path; trained task models are cached once
per test session in a temporary folder (never in the user's home), one folder for all the
session's workers when pytest-xdist runs them in parallel (``-n``): the file cache takes
concurrent writers. Each worker runs on a core of its own (CPU affinity, which the processes
it starts inherit: a search's "every core" target is then one thread) and has its own machine
lock, so workers never wait on each other (no test asserts a time)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.hookimpl(tryfirst=True)  # before xdist names the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that read the session's ``real_study`` in one xdist group (scripts/test.sh runs
    ``--dist loadgroup``): one worker builds that study, not each."""
    for item in items:
        if "real_study" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("real-study"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    # Under xdist every worker's base temp folder sits in the one of the whole run.
    root = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    cache = root / "autoprune-cache"
    cache.mkdir(exist_ok=True)
    os.environ["AUTOPRUNE_CACHE_DIR"] = str(cache)
    if worker:
        os.environ["AUTOPRUNE_LATENCY_LOCK"] = str(tmp_path_factory.getbasetemp() / "latency.lock")
        if hasattr(os, "sched_setaffinity"):
            cores = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cores[int(worker.removeprefix("gw")) % len(cores)]})
    torch.set_num_threads(1)  # small test models gain nothing from more; contention costs a lot
    return cache


@pytest.fixture(scope="session")
def digits_task():  # type: ignore[no-untyped-def]
    """A small digits task (width 16: trains in a couple of seconds)."""
    import autoprune as ap

    return ap.tasks.get("digits", width=16, batch_size=32)


@pytest.fixture(scope="session")
def tiny_task():  # type: ignore[no-untyped-def]
    """The smallest digits task (width 8), the searches' task in tests/study and tests/cli."""
    import autoprune as ap

    return ap.tasks.get("digits", width=8, batch_size=16)


@pytest.fixture(scope="session")
def real_study(tmp_path_factory: pytest.TempPathFactory, digits_task):  # type: ignore[no-untyped-def]
    """A study of real pruned digits models, built once for the results and CLI tests:
    ``(storage, study name, {label: (trial number, pruned model, metrics)})`` as
    ``autoprune.testing.studies.make_real_study`` returns them. Read it; don't add to it."""
    from autoprune.testing.studies import make_real_study

    storage = f"sqlite:///{tmp_path_factory.mktemp('real')}/s.db"
    return storage, "real", make_real_study(storage, "real", digits_task)


@pytest.fixture(scope="session")
def postgres_url():  # type: ignore[no-untyped-def]
    """A real PostgreSQL server on 127.0.0.1 for the session (Debian's postgresql package)."""
    from autoprune.testing.postgres import temporary_postgres

    try:
        ctx = temporary_postgres()
        url = ctx.__enter__()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL server could be started: {exc}")
    yield url
    ctx.__exit__(None, None, None)


class _GroupedNet(torch.nn.Module):
    """A grouped convolution (4 groups) between a plain conv and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 16, 3)
        self.b = torch.nn.Conv2d(16, 32, 3, groups=4)
        self.fc = torch.nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.a(x)).mean((2, 3)))


@pytest.fixture
def grouped_net() -> tuple[torch.nn.Module, torch.Tensor]:
    """A small model with a grouped convolution, in eval mode, and an input for it."""
    return _GroupedNet().eval(), torch.randn(1, 3, 8, 8)
