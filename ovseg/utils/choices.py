"""One check for a config value that must be one of a few names."""

from __future__ import annotations

from typing import Sequence

__all__ = ["check_choice"]


def check_choice(value: str, choices: Sequence[str], key: str, hint: str = "") -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming ``key``, the
    choices and ``hint`` (what each one does)."""
    if value not in choices:
        tail = f": {hint}" if hint else ""
        raise ValueError(f"{key} {value!r} is not one of {list(choices)}{tail}")
    return value
