"""The ``kerasfed`` command line (``kerasfed ...`` or ``python -m kerasfed ...``).

Imports nothing heavy: ``kerasfed launch`` must start in a fraction of a second,
and TensorFlow loads only in the workers it starts.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from kerasfed import launch
from kerasfed._version import __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``kerasfed`` argument parser with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="kerasfed",
        description="kerasfed: train a compiled Keras model data-parallel or federated.",
    )
    parser.add_argument("--version", action="version", version=f"kerasfed {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    subparsers.required = True
    launch.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``kerasfed`` command.

    Args:
        argv: The arguments after the program name. Defaults to ``sys.argv[1:]``.

    Returns:
        The exit code. Argument errors exit with code 2 through ``SystemExit``.
    """
    args = build_parser().parse_args(argv)
    return args.handler(args)
