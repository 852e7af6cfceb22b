"""The ``ndd`` command line: argument parsing and printing only.

Every subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning an exit code.  All work is done by the
library API, so everything the CLI does is reachable from Python too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import ndd

# Subcommand modules, in the order ``ndd --help`` lists them.
SUBCOMMAND_MODULES: tuple[str, ...] = ("segment", "similarity", "evaluate", "train", "evaluate_kernel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ndd",
        description="Neural diffusion distance for image segmentation (Sun & Xu, NeurIPS 2019).",
    )
    parser.add_argument("--version", action="version", version=f"ndd {ndd.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"ndd.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
