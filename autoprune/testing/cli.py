"""Run the ``autoprune`` command in this process, as tests of its refusals do.

A subprocess starts an interpreter and imports torch for every command (seconds each); the
tests that must see the installed command run it in a subprocess, and the many that check
an exit code and a one-line message call :func:`run_cli` instead.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import NamedTuple

__all__ = ["CliRun", "run_cli"]


class CliRun(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: str | Path = ".") -> CliRun:
    """``autoprune ARGS`` run from ``cwd`` through :func:`autoprune.cli.main`.

    Returns the exit code (argparse's ``SystemExit`` included), stdout and stderr. The working
    folder, warning filters and Optuna's log level are restored afterwards.

    Example:
        >>> run_cli("search", "--trials", "0").returncode
        2
    """
    import optuna

    from autoprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    verbosity = optuna.logging.get_verbosity()  # `search` sets it for its process
    with warnings.catch_warnings(), contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            optuna.logging.set_verbosity(verbosity)
    return CliRun(code, out.getvalue(), err.getvalue())
