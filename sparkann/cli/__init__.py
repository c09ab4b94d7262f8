"""The ``sparkann`` command line: build, search, evaluate, knn-join, vacuum, demo and convert.

Each subcommand parses its options (:mod:`.parser`) and calls the library
(:mod:`.commands`, :mod:`.demo`); the Spark session is created here
(:mod:`.session`) because the CLI is an application. ``jobs/*.py`` are thin
spark-submit entry points around :func:`main`.
"""

from __future__ import annotations

import sys

from .errors import UsageError, one_line, user_errors
from .parser import build_parser
from .session import configure_logging

__all__ = ["UsageError", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the ``sparkann`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 if the demo misses its recall target, 2 on a usage
        or input error (reported on stderr as one ``error: ...`` line).
    """
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as done:  # --help, --version
        return done.code if isinstance(done.code, int) else 0
    configure_logging(args.log_level)
    try:
        return args.func(args)
    except user_errors() as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
