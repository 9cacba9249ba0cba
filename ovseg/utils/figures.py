"""Figures: a titled grid of similarity heat maps, pictures side by side, atomic image files.

Rendered on matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Sequence, Tuple

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import cm
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .io import atomic_write

__all__ = ["HeatmapLayout", "heatmap_grid", "panel_row", "save_image"]

# geometry, in pixels at _DPI
_DPI = 100
_PANEL_PX = 240
# a panel keeps the image's aspect up to 4:1 tall (a 3000x5 strip's would be 144000 px)
_MAX_PANEL_H_PX = 4 * _PANEL_PX
_TITLE_PX = 28
_COLORBAR_PX = 80
_ROW_OF = 4  # up to 8 maps: rows of 4; more: a square-ish grid


@dataclass(frozen=True)
class HeatmapLayout:
    """Where the panels of a heat-map grid are.

    Attributes:
        titles: one title per panel, in order (row by row).
        rows, cols: the grid's shape.
        size: (width, height) of the rendered picture in pixels.
        value_range: (low, high) of the shared colour scale.
    """

    titles: Tuple[str, ...]
    rows: int
    cols: int
    size: Tuple[int, int]
    value_range: Tuple[float, float]


def heatmap_grid(
    image: np.ndarray,
    maps: np.ndarray,
    names: Sequence[str],
    *,
    cmap: str = "jet",
    image_weight: float = 0.35,
    value_label: str = "cosine similarity of pixel and text embeddings",
) -> Tuple[np.ndarray, HeatmapLayout]:
    """One heat map per name over the image, laid out as a titled grid with a colour bar.

    All panels share one colour scale (the lowest and highest value over every map), so
    a hot panel is a word the image matches more than the others, not just somewhere.
    Panels are 240 px wide and keep the image's aspect, up to 960 px tall.

    Args:
        image (np.ndarray): (H, W, 3) uint8 RGB.
        maps (np.ndarray): (K, H, W) float similarities, one map per name.
        names: the K names, used as panel titles.
        cmap (str): a matplotlib colour map.
        image_weight (float): how much of the (grey) image shows through each map.
        value_label (str): the colour bar's caption (what the maps hold).

    Returns:
        tuple: (picture (height, width, 3) uint8 RGB, :class:`HeatmapLayout`).
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != len(names) or maps.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"maps {maps.shape} must be (K, H, W) with K = {len(names)} names and (H, W) = "
            f"the image's {image.shape[:2]}"
        )
    if len(names) == 0:
        raise ValueError("no names to draw heat maps for")
    k = len(names)
    cols = min(k, _ROW_OF) if k <= 2 * _ROW_OF else math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    h, w = image.shape[:2]
    panel_w = _PANEL_PX
    panel_h = min(max(1, round(_PANEL_PX * h / w)), _MAX_PANEL_H_PX)
    width = cols * panel_w
    height = rows * (panel_h + _TITLE_PX) + _COLORBAR_PX
    low, high = float(maps.min()), float(maps.max())
    if not high > low:  # a constant map: any non-empty range draws it in one colour
        high = low + 1e-6
    peaks = maps.reshape(k, -1).max(axis=1)

    maps, grey = _for_panels(maps, image, (panel_h, panel_w))
    colormap = matplotlib.colormaps[cmap]
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    titles = []
    for i, name in enumerate(names):
        r, c = divmod(i, cols)
        # axes rectangles in figure fractions, from the top-left panel
        left = c * panel_w / width
        bottom = 1.0 - ((r + 1) * (panel_h + _TITLE_PX)) / height
        ax = fig.add_axes((left, bottom, panel_w / width, panel_h / height))
        ax.axis("off")
        colored = colormap((maps[i] - low) / (high - low))[..., :3]
        blend = (1 - image_weight) * colored + image_weight * grey
        ax.imshow(np.clip(blend, 0, 1), interpolation="bilinear")
        title = f"{name} (max {peaks[i]:.2f})"
        ax.set_title(title, fontsize=10, pad=3)
        titles.append(title)
    cax = fig.add_axes((0.1, 0.58 * _COLORBAR_PX / height, 0.8, 0.15 * _COLORBAR_PX / height))
    mappable = cm.ScalarMappable(norm=mcolors.Normalize(low, high), cmap=colormap)
    bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
    bar.set_label(value_label, fontsize=9)
    bar.ax.tick_params(labelsize=8)
    canvas.draw()
    picture = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    layout = HeatmapLayout(
        titles=tuple(titles),
        rows=rows,
        cols=cols,
        size=(picture.shape[1], picture.shape[0]),
        value_range=(low, high),
    )
    return picture, layout


def _for_panels(
    maps: np.ndarray, image: np.ndarray, panel: Tuple[int, int]
) -> Tuple[np.ndarray, np.ndarray]:
    """(maps, (h, w, 1) grey image) at most twice the panel's (height, width): a panel is
    240 px wide, so a photo's 12 megapixels (float64 RGBA per panel) would be coloured for
    nothing; the caller takes titles and the colour scale from the full maps."""
    grey = image.astype(np.float32).mean(axis=2) / 255.0
    h, w = grey.shape
    shown = (min(h, 2 * panel[0]), min(w, 2 * panel[1]))
    if shown != (h, w):
        maps, grey = _shrink(maps, shown), _shrink(grey[None], shown)[0]
    return maps, grey[..., None]


def _shrink(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(N, H, W) float32 maps averaged down to (N, *size)."""
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    return F.interpolate(x, size=size, mode="area")[0].numpy()


def panel_row(panels: Sequence[Tuple[str, np.ndarray]], panel_height: int = 320) -> np.ndarray:
    """Pictures side by side, each scaled to one height, with a title above each.

    Args:
        panels: (title, (H, W, 3) uint8 RGB) pairs.
        panel_height (int): the height every picture is drawn at, in pixels.

    Returns:
        np.ndarray: (height, width, 3) uint8 RGB.
    """
    if not panels:
        raise ValueError("no panels to lay out")
    widths = [max(1, round(panel_height * p.shape[1] / p.shape[0])) for _, p in panels]
    width, height = sum(widths), panel_height + _TITLE_PX
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    left = 0
    for (title, picture), w in zip(panels, widths):
        ax = fig.add_axes((left / width, 0.0, w / width, panel_height / height))
        ax.axis("off")
        ax.imshow(picture, interpolation="nearest", aspect="auto")
        ax.set_title(title, fontsize=10, pad=3)
        left += w
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_image(path: str, array: np.ndarray, palette: bool = False) -> None:
    """Save an (H, W, 3) RGB or (H, W) label array atomically; the format follows the suffix.

    Args:
        path (str): the file; ``.jpg``/``.jpeg`` write JPEG, anything else PNG.
        array (np.ndarray): uint8 RGB, or a uint8/uint16 label map (kept as is).
        palette (bool): store an RGB PNG with a 256-colour palette (heat maps: a third of
            the size, no visible change).
    """
    ext = os.path.splitext(path)[1].lower()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(ext, "PNG")
    image = Image.fromarray(np.ascontiguousarray(array))
    if palette and fmt == "PNG" and image.mode == "RGB":
        image = image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    atomic_write(path, lambda f: f.write(buffer.getvalue()), fsync=False)
