"""What the command-line tools share: a user's mistake ends a tool with one line, not a trace."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence

from .resources import OutOfResourcesError

__all__ = [
    "USER_ERRORS",
    "parse_opts_flag",
    "parse_trailing_opts",
    "positive_float",
    "positive_int",
    "run_reporting_errors",
    "without_opts_flag",
]

# a missing file, an unknown dataset or a bad option value, or too little memory for the
# settings given: the message says what to change
USER_ERRORS = (ValueError, OSError, OutOfResourcesError)


def run_reporting_errors(prog: str, action: Callable[[], Any]) -> int:
    """Run a tool's work; a user error becomes ``<prog>: error: <message>`` on stderr.

    Args:
        prog (str): the tool's file name, e.g. ``"plot_metrics.py"`` (as argparse names it).
        action: the work, called without arguments; what it returns is not used.

    Returns:
        int: the exit status, 0 when the work is done, 2 (argparse's for a usage error)
        when it raised one of :data:`USER_ERRORS`.
    """
    try:
        action()
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse ``type``: a number > 0 (not NaN)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


# config overrides: train_net.py and the tools take them as trailing KEY VALUE pairs
# (detectron2's train_net), the demo and export_onnx.py after --opts (detectron2's demo)
OPTS_FLAG = "--opts"


def without_opts_flag(argv: Optional[Sequence[str]] = None) -> list:
    """``argv`` (``sys.argv[1:]`` when None) without the ``--opts`` before trailing overrides:
    the command line :func:`parse_trailing_opts` parses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if OPTS_FLAG in argv:
        at = argv.index(OPTS_FLAG)
        argv = argv[:at] + argv[at + 1 :]
    return argv


def parse_trailing_opts(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
) -> argparse.Namespace:
    """Parse a command whose config overrides are a trailing ``opts`` (``KEY VALUE ...``),
    also accepting them after ``--opts``, as the demo and ``export_onnx.py`` take them.

    Args:
        parser: the tool's parser, with a positional ``opts`` of ``nargs=REMAINDER``.
        argv: the arguments; ``sys.argv[1:]`` when None.
    """
    args = parser.parse_args(without_opts_flag(argv))
    opts = getattr(args, "opts", None)  # a subcommand may take none
    if opts and opts[0] == "--":
        args.opts = opts[1:]
    return args


def parse_opts_flag(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
) -> argparse.Namespace:
    """Parse a command whose config overrides follow ``--opts``; overrides written at the end
    without it (as train_net.py takes them) are refused with the command that works.

    Args:
        parser: the tool's parser, with an ``--opts`` of ``nargs=REMAINDER``.
        argv: the arguments; ``sys.argv[1:]`` when None.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = ""
        if not extra[0].startswith("-") and not args.opts:
            hint = (
                f"; config overrides go after {OPTS_FLAG} in this tool: "
                f"{OPTS_FLAG} {' '.join(extra)}"
            )
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args
