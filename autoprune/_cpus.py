"""The CPU cores this process may run on: what "every core" means for a CPU target."""

from __future__ import annotations

import os

__all__ = ["usable_cpus"]


def usable_cpus() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (a process
    started with ``taskset -c 0``, or a container's cpuset, gets those cores only), else
    :func:`os.cpu_count`. Child processes inherit the affinity."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1
