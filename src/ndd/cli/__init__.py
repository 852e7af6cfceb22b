"""The ``ndd`` command line: argument parsing and printing only.

Every subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning an exit code.  All work is done by the
library API, so everything the CLI does is reachable from Python too.

:func:`main` imports only the module of the subcommand being run (the others
get a parser with their one-line help, from :mod:`ndd.cli._commands`), so
``ndd evaluate`` never imports torch and ``ndd --help`` starts at once.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

import ndd

from ._commands import SUBCOMMANDS

__all__ = ["build_parser", "main", "console_main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage mistakes (an unknown option, a bad value) are one line on
    stderr, naming the command and its ``--help``, exit code 2: argparse's own prints the whole
    usage block first (14 lines for ``ndd segment``). Subcommand parsers are of this class too
    (``add_subparsers`` builds them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ndd`` parser.

    Args:
        command: build only this subcommand's full parser (and importing only its
            module); the others are listed with their help. ``None``: all of them.
    """
    parser = _Parser(
        prog="ndd",
        description="Neural diffusion distance for image segmentation (Sun & Xu, NeurIPS 2019).",
    )
    parser.add_argument("--version", action="version", version=f"ndd {ndd.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for sub in SUBCOMMANDS:
        if command is None or sub.name == command:
            importlib.import_module(f"ndd.cli.{sub.module}").register(subparsers)
        else:
            subparsers.add_parser(sub.name, help=sub.help)
    return parser


def _chosen_command(argv: Sequence[str]) -> str:
    """The subcommand named in ``argv`` (the first word that is one), or ``""`` for none."""
    names = {sub.name for sub in SUBCOMMANDS}
    return next((a for a in argv if a in names), "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen_command(argv))
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


def console_main() -> NoReturn:
    """The ``ndd`` command (and ``python -m ndd``): :func:`main`, then exit with its status.

    Before exiting, every object is frozen (``gc.freeze``): Python's shutdown would otherwise
    take apart, one by one, the hundreds of thousands of objects torch and the model made,
    which took about 0.4 s after ``ndd segment`` on this project's 2-core VM (0.5-0.7 s after
    ``python -c "import torch"``, 0.18 s with the freeze); frozen, they are left to the
    operating system. Every output file is closed by then (the writers use ``with`` blocks),
    and the ``atexit`` handlers still run. Only for the process's own exit: :func:`main`
    called from Python (tests, notebooks) freezes nothing.
    """
    status = main()
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    console_main()
