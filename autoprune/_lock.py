"""The machine lock: latency measurements on one machine take turns with busy work.

A latency measured while another process computes is not the model's latency. One
readers/writer lock per machine keeps them apart, with three verbs:

- ``busy()`` (shared): this thread computes (prunes, fine-tunes, evaluates accuracy). It
  waits while a measurement runs, then keeps new measurements out until the block ends.
- ``measuring()`` (exclusive): this thread times a model. It waits for the other
  measurements and for every busy block already running, and lets go of this thread's own
  busy block meanwhile (or it would wait for itself).
- ``step()``: a training-step boundary. A busy thread lets a pending measurement in and
  takes its turn again afterwards, so long fine-tuning never starves a measurement.

The lock lives in files, so it spans processes: ``$AUTOPRUNE_LATENCY_LOCK`` if set, else
``autoprune-latency.lock`` in :func:`tempfile.gettempdir`, plus a companion ``<lock>.steps``
whose shared ``flock`` marks the busy blocks. Processes that do not use the lock (another
user's job) are not paused: run a study on a machine of its own when its latencies matter.

Example:
    >>> lock = machine_lock()
    >>> with lock.busy():
    ...     for step in range(2):
    ...         lock.step()  # loss.backward(); optimizer.step()
    >>> with lock.measuring() as waited_s:
    ...     pass  # time the model
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import filelock

try:  # shared locks for busy blocks; without fcntl the lock is a barrier only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_ENV", "MachineLock", "TrainingGate", "default_lock_path", "machine_lock", "training_gate"]

LOCK_ENV = "AUTOPRUNE_LATENCY_LOCK"
_LOCKS: dict[str, MachineLock] = {}
_LOCKS_GUARD = threading.Lock()


def default_lock_path() -> Path:
    """The machine-wide lock file: ``$AUTOPRUNE_LATENCY_LOCK`` or one in the temp folder."""
    env = os.environ.get(LOCK_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / "autoprune-latency.lock"


def machine_lock(path: str | os.PathLike[str] | None = None) -> MachineLock:
    """This process's :class:`MachineLock` on ``path`` (default: :func:`default_lock_path`)."""
    key = os.fspath(path if path is not None else default_lock_path())
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = MachineLock(key)
        return lock


class MachineLock:
    """A readers/writer lock across the processes of one machine (see the module docs).

    Build it with :func:`machine_lock`: one object per path and process, so the state of
    each thread (busy, measuring) is known to every caller in that thread.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._gate = filelock.FileLock(path)  # per thread and reentrant
        self._steps = path + ".steps"
        self._local = threading.local()  # per thread: measuring depth, busy descriptor

    def __repr__(self) -> str:
        return f"MachineLock({self.path!r})"

    # ------------------------------------------------------------------ the three verbs
    @contextlib.contextmanager
    def busy(self) -> Iterator[float]:
        """This thread computes: yields the seconds it waited for a running measurement.

        Reentrant, and nothing to wait for inside this thread's own measurement.
        """
        if self._holding() or self._depth():
            yield 0.0
            return
        waited = self._take()
        try:
            yield waited
        finally:
            self._drop()

    @contextlib.contextmanager
    def measuring(self) -> Iterator[float]:
        """This thread measures (exclusive): yields the seconds it waited for its turn."""
        start = time.perf_counter()
        depth = self._depth()
        was_busy = self._holding()
        if was_busy:
            self._drop()
        try:
            with self._gate:
                # Nested in this thread's own measurement: the steps lock is already held.
                steps = _flock(self._steps, fcntl.LOCK_EX) if fcntl and not depth else contextlib.nullcontext()
                with steps:
                    self._local.depth = depth + 1
                    try:
                        yield time.perf_counter() - start
                    finally:
                        self._local.depth = depth
        finally:
            if was_busy:
                self._take()

    def step(self) -> float:
        """A training-step boundary: returns the seconds spent letting a measurement go first."""
        if self._holding():
            self._drop()
            return self._take()
        return self._wait()

    # ------------------------------------------------------------------ state of this thread
    def _depth(self) -> int:
        return int(getattr(self._local, "depth", 0))

    def _holding(self) -> bool:
        return getattr(self._local, "fd", None) is not None

    def _wait(self) -> float:
        """Wait while a measurement holds the gate (well under a millisecond when none does)."""
        start = time.perf_counter()
        with self._gate:
            pass
        return time.perf_counter() - start

    def _take(self) -> float:
        waited = self._wait()
        fd: int | None = -1
        if fcntl is not None:
            fd = os.open(self._steps, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(fd, fcntl.LOCK_SH)
        self._local.fd = fd
        return waited

    def _drop(self) -> None:
        fd, self._local.fd = getattr(self._local, "fd", None), None
        if fd is not None and fd >= 0:
            os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def _flock(path: str, operation: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block: one process at
    a time, e.g. to build a cached file that others then read. Without fcntl, no lock."""
    if fcntl is None:
        yield
        return
    with _flock(os.fspath(path), fcntl.LOCK_EX):
        yield


# ---------------------------------------------------------------------------- for training loops
class TrainingGate:
    """What :func:`training_gate` returns: the wait is over; as a context it marks a step busy.

    Attributes:
        waited_s: seconds spent waiting for measurements at the gate.
    """

    def __init__(self, waited_s: float, lock: MachineLock) -> None:
        self.waited_s = waited_s
        self._lock = lock
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> TrainingGate:
        self._stack.enter_context(self._lock.busy())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()

    def __repr__(self) -> str:
        return f"TrainingGate(waited_s={self.waited_s:.3f})"


def training_gate(lock_path: str | os.PathLike[str] | None = None) -> TrainingGate:
    """The machine lock's step for a training loop: ``machine_lock(lock_path).step()``; as a
    context, also a busy block (``busy()``) around the step.

    Called between training steps, it returns once no measurement holds the lock. Used as a
    context manager around a step, it also keeps a measurement from starting until that
    step has finished, so a measurement never overlaps a gated step.

    Example:
        >>> for step in range(2):
        ...     with training_gate():
        ...         pass  # loss.backward(); optimizer.step()
    """
    lock = machine_lock(lock_path)
    return TrainingGate(lock.step(), lock)
