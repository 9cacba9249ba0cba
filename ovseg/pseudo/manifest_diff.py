"""Comparing pseudo-label manifests: which fields differ, with both values."""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping

__all__ = ["manifest_diff", "normalise", "without"]


def manifest_diff(old: Any, new: Any, path: str) -> list:
    """Dotted names (with both values) where two manifest values differ."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += manifest_diff(
                old.get(key, "<absent>"), new.get(key, "<absent>"), f"{path}.{key}"
            )
        return out
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
        if old == new:
            return []
        if len(old) != len(new):
            return [(path, f"{len(old)} items {_short(old)}", f"{len(new)} items {_short(new)}")]
        i = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
        return [(f"{path}[{i}]", repr(old[i]), repr(new[i]))]
    if old != new:
        return [(path, repr(old), repr(new))]
    return []


def _short(values: list, n: int = 6) -> str:
    if len(values) <= n:
        return repr(values)
    return repr(values[:n])[:-1] + f", ... ({len(values) - n} more)]"


def normalise(manifest: Mapping[str, Any]) -> Dict[str, Any]:
    # JSON round trip: tuples become lists, so a fresh manifest compares equal to a stored one
    return json.loads(json.dumps(dict(manifest)))


def without(manifest: Mapping[str, Any], volatile) -> Dict[str, Any]:
    """The manifest without its ``volatile`` (bookkeeping) fields."""
    return {k: v for k, v in manifest.items() if k not in volatile}
