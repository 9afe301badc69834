"""The ``autoprune`` command line: ``search``, ``trials``, ``report``, ``apply``, ``layers``.

Each sub-command lives in ``autoprune/commands/<name>.py`` with ``add_arguments(parser)``
and ``run(args) -> int``. Bad usage or bad input prints one line and exits 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["main", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

COMMANDS = {
    "search": "run a multi-objective pruning search (resumes an existing study)",
    "trials": "print the trials table of a study",
    "report": "write the HTML Pareto report of a study",
    "apply": "apply a chosen trial's schedule and export the pruned model",
    "layers": "show what a search would prune in the task's model, and the size of its search space",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the user sees what was wrong and how to get help.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autoprune", description="AutoML search over pruning schedules for PyTorch models.")
    from autoprune import __version__

    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"autoprune.commands.{name}")
        cmd = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        cmd.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from autoprune._errors import AutopruneError

    # Library chatter (experimental-API notes) is not for the terminal user of a CLI.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*experimental.*")
    try:
        return int(args._run(args))
    except AutopruneError as exc:
        if args.debug:
            raise
        print(f"autoprune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"autoprune {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
