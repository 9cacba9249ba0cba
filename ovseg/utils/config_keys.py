"""A config value by its dotted key, as configs and messages name it."""

from __future__ import annotations

from typing import Any

__all__ = ["config_value"]

_RAISE = object()


def config_value(cfg, key: str, missing: Any = _RAISE) -> Any:
    """The value of ``key`` (e.g. ``"MODEL.CLIP.TEMPLATES"``) in ``cfg``; ``missing`` where
    ``cfg`` lacks the key (a key an extension adds), a ``KeyError`` without it."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if missing is _RAISE:
                raise KeyError(f"config key {key} ({part!r} not found)")
            return missing
        node = node[part]
    return node
