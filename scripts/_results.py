"""What every benchmark script stores next to its numbers, so that ``scripts/benchmarks_doc.py``
can head each table of ``docs/benchmarks.md`` with where it came from.

A script writes ``results/<name>.json`` as ``{"meta": {...}, "rows": [...], "table": "..."}``:
``meta`` holds at least ``command``, ``commit``, ``date`` and ``machine`` (from
:func:`run_meta`), ``table`` the Markdown table the script printed.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["command_line", "run_meta", "write_result"]

_ROOT = Path(__file__).resolve().parent.parent


def command_line(argv: list[str] | None = None) -> str:
    """``python scripts/<script>.py ARGS`` as it was run (the arguments shell-quoted)."""
    script = Path(sys.argv[0])
    try:
        shown = script.resolve().relative_to(_ROOT).as_posix()
    except ValueError:
        shown = script.as_posix()
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", shown, *map(shlex.quote, args)])


def _commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    # Uncommitted changes to tracked files under autoprune/ or scripts/ mean the numbers may not
    # come from that commit: say so.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "autoprune", "scripts")
    return f"{head}+changes" if dirty else head


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPUs, torch {torch.__version__} " \
           f"with {threads} thread{'s' if threads != 1 else ''}"  # fmt: skip


def run_meta(argv: list[str] | None = None, *, command: str | None = None) -> dict[str, str]:
    """The command, the commit (with ``+changes`` when the package or scripts were edited), the
    date (UTC, to the minute) and the machine of this run."""
    return {
        "command": command or command_line(argv),
        "commit": _commit(),
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": _machine(),
    }


def write_result(path: Path, rows: Any, *, table: str, meta: dict[str, Any], **extra: Any) -> None:
    """Write ``{"meta", "rows", "table", **extra}`` to ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"meta": meta, "rows": rows, "table": table.strip("\n"), **extra}
    path.write_text(json.dumps(record, indent=2, default=float) + "\n")
