"""What the command-line tools share: a user's mistake ends a tool with one line, not a trace."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from .resources import OutOfResourcesError

__all__ = ["USER_ERRORS", "positive_float", "positive_int", "run_reporting_errors"]

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
