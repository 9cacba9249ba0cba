"""Class colours that are the same on every run and machine."""

from __future__ import annotations

import colorsys

__all__ = ["deterministic_colors"]


def deterministic_colors(num: int) -> list[list[int]]:
    """Return ``num`` distinct-looking RGB colours, the same on every run and machine.

    Hues step by the golden ratio so neighbouring ids get far-apart colours; saturation and
    value cycle through three levels so large vocabularies (847 classes) stay distinguishable.
    """
    colors = []
    for i in range(num):
        hue = (i * 0.618033988749895) % 1.0
        sat = (0.95, 0.65, 0.8)[i % 3]
        val = (0.95, 0.75, 0.55)[(i // 3) % 3]
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colors.append([round(r * 255), round(g * 255), round(b * 255)])
    return colors
