"""Semantic segmentations drawn over images: labelled overlays, seen and unseen apart.

Shared by ``demo/`` and the ``tools/visualize_*.py`` scripts. Overlays use detectron2's
:class:`~detectron2.utils.visualizer.Visualizer`; classes of a zero-shot split's unseen part
are drawn hatched, with a dashed border and a " (unseen)" suffix, so a glance tells which
classes a model never saw labelled. Figures and file writing live in
:mod:`ovseg.utils.figures` (re-exported here).
"""

from __future__ import annotations

import colorsys
import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
from matplotlib import colors as mplc
from matplotlib import patches

from detectron2.data import Metadata
from detectron2.utils.visualizer import GenericMask, VisImage, Visualizer

from ..data.image_io import LabelSizeError
from ..data.image_io import read_label as read_label_map
from .colors import deterministic_colors
from .figures import HeatmapLayout, heatmap_grid, panel_row, save_image

__all__ = [
    "OverlayVisualizer",
    "UNSEEN_SUFFIX",
    "MAX_OVERLAY_SIDE",
    "HeatmapLayout",
    "draw_semantic",
    "heatmap_grid",
    "label_dtype_for",
    "overlay_scale",
    "panel_row",
    "read_label",
    "save_image",
    "vocabulary_metadata",
]

UNSEEN_SUFFIX = " (unseen)"
# the longest side an overlay is enlarged to (overlay_scale): a 64-pixel image shows at 320
MAX_OVERLAY_SIDE = 4096
# detectron2's own semantic edge colour (visualizer._OFF_WHITE), and a dark one for unseen
_SEEN_EDGE = (1.0, 1.0, 240.0 / 255)
_UNSEEN_EDGE = (0.05, 0.05, 0.05)
_STRIPE_PERIOD = 8  # pixels (output scale) between two hatch stripes
_POINTS_PER_INCH = 72


class OverlayVisualizer(Visualizer):
    """detectron2's :class:`Visualizer`, its polygons added to the drawing without updating
    the axes' data limits: the limits are the image's, fixed by its ``imshow``, and
    matplotlib's update (``Axes.add_patch``) walks every vertex of a mask's outline in Python.
    Same pixels; a 2000x1500 overlay of 20 classes drew in a third of the time."""

    def draw_polygon(self, segment, color, edge_color=None, alpha=0.5):
        """As ``Visualizer.draw_polygon``: ``color`` filled at ``alpha``; the edge
        ``edge_color``, else ``color`` (a darker shade when ``alpha`` > 0.8)."""
        if edge_color is None:
            dark = alpha > 0.8
            edge_color = self._change_color_brightness(color, -0.7) if dark else color
        polygon = patches.Polygon(
            segment,
            fill=True,
            facecolor=mplc.to_rgb(color) + (alpha,),
            edgecolor=mplc.to_rgb(edge_color) + (1,),
            linewidth=max(self._default_font_size // 15 * self.output.scale, 1),
        )
        self.output.ax.add_artist(polygon)  # add_patch less its data-limit update
        return self.output


def vocabulary_metadata(
    names: Sequence[str], colors: Optional[Sequence[Sequence[int]]] = None, name: str = ""
) -> Metadata:
    """A detectron2 ``Metadata`` for drawing labels of a vocabulary.

    Args:
        names: the class names, in label order.
        colors: one RGB (0-255) colour per name; default :func:`deterministic_colors`, the
            colours the registered datasets use, so a class index keeps its colour.
        name (str): a name for the metadata (only shown in its repr).

    Returns:
        Metadata: with ``stuff_classes`` and ``stuff_colors``.
    """
    names = list(names)
    colors = [list(c) for c in colors] if colors is not None else deterministic_colors(len(names))
    if len(colors) != len(names):
        raise ValueError(f"{len(colors)} colours given for {len(names)} class names")
    return Metadata(name=name or "vocabulary", stuff_classes=names, stuff_colors=colors)


def read_label(path: str, shape: Tuple[int, int]) -> np.ndarray:
    """A label PNG as an int64 array, checked against the image size (H, W).

    Raises:
        ImageDecodeError: the file cannot be decoded (truncated, empty, not an image).
        LabelSizeError: it is not one channel of the image's size.
    """
    label = read_label_map(path).astype(np.int64)
    if label.ndim != 2 or label.shape != tuple(shape):
        raise LabelSizeError(
            f"label {path} has shape {label.shape}, but its image is {tuple(shape)}; labels "
            "must be single-channel PNGs of the image's size: convert the label again, or "
            "remove the image and its label from the dataset"
        )
    return label


def label_dtype_for(num_classes: int) -> Tuple[np.dtype, int]:
    """(dtype, ignore value) of a label PNG for ``num_classes`` classes.

    uint8 with 255 while every class index is below 255, else uint16 with 65535.
    """
    if num_classes <= 255:
        return np.dtype(np.uint8), 255
    if num_classes <= 65535:
        return np.dtype(np.uint16), 65535
    raise ValueError(f"{num_classes} classes do not fit a 16-bit label PNG")


def overlay_scale(
    height: int, width: int, min_size: int = 0, max_side: int = MAX_OVERLAY_SIDE
) -> float:
    """The Visualizer scale that makes an overlay's short side at least ``min_size`` pixels,
    an integer, without taking its long side past ``max_side`` (0: no limit).

    Tiny images (the 64-pixel offline world) would otherwise carry unreadable class names. A
    thin strip is enlarged only as far as its long side allows: a 3x5000 one, enlarged to a
    320-pixel short side, was a 321x535,000 overlay (44 s to draw, 0.5 GB, and Pillow warns
    of a decompression bomb when it is opened).
    """
    short, long = min(height, width), max(height, width)
    if min_size <= 0 or short >= min_size:
        return 1.0
    scale = math.ceil(min_size / short)
    if max_side > 0 and long * scale > max_side:
        scale = max(1, max_side // long)
    return scale


def _stripes(mask: np.ndarray, color: Sequence[float], scale: float) -> np.ndarray:
    """RGBA diagonal stripes of ``color`` inside ``mask``, at the drawing's resolution.

    Args:
        mask (np.ndarray): (H, W) binary mask at the image's resolution.
        color: RGB in [0, 1].
        scale (float): drawing size / image size; stripes are drawn on the enlarged grid so
            they stay thin lines rather than pixel-sized checks.

    Returns:
        np.ndarray: (round(H * scale), round(W * scale), 4) float32 RGBA.
    """
    h, w = mask.shape
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    rows = np.minimum((np.arange(out_h) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(out_w) / scale).astype(int), w - 1)
    inside = mask.astype(bool)[rows[:, None], cols[None, :]]
    yy, xx = np.mgrid[0:out_h, 0:out_w]
    on = ((xx + yy) % _STRIPE_PERIOD) < _STRIPE_PERIOD // 2
    rgba = np.zeros((out_h, out_w, 4), np.float32)
    rgba[..., :3] = color
    rgba[..., 3] = (on & inside).astype(np.float32) * 0.9
    return rgba


def draw_semantic(
    image: np.ndarray,
    label: np.ndarray,
    metadata: Metadata,
    *,
    ignore_label: int = 255,
    unseen: Sequence[str] = (),
    scale: float = 1.0,
    alpha: float = 0.6,
) -> VisImage:
    """Draw a label map over an image, class names written on their regions.

    Seen classes: filled in their colour with a light border (detectron2's style). Unseen
    classes (names in ``unseen``): lighter fill, hatched in their colour, a dark dashed
    border and the name suffixed with " (unseen)". ``ignore_label`` pixels and values
    outside the vocabulary stay undrawn.

    Args:
        image (np.ndarray): (H, W, 3) uint8 RGB.
        label (np.ndarray): (H, W) integer class indices into ``metadata.stuff_classes``.
        metadata (Metadata): ``stuff_classes`` and ``stuff_colors``.
        ignore_label (int): the unlabelled value.
        unseen: class names to draw in the unseen style.
        scale (float): output size relative to the image.
        alpha (float): opacity of seen classes' fill.

    Returns:
        VisImage: the drawing (``.get_image()`` gives (H*scale, W*scale, 3) uint8 RGB).
    """
    label = np.asarray(label)
    if label.shape != image.shape[:2]:
        raise ValueError(f"label {label.shape} and image {image.shape[:2]} differ in size")
    names = list(metadata.stuff_classes)
    unseen_set = set(unseen)
    vis = OverlayVisualizer(image, metadata, scale=scale)
    # detectron2 sizes names for large photos (sqrt(H*W) / 90); keep them legible when small
    vis._default_font_size = max(vis._default_font_size, 13 / scale)
    values, counts = np.unique(label, return_counts=True)
    # largest regions first, so small ones (and their names) are drawn on top
    for value in values[np.argsort(-counts, kind="stable")]:
        value = int(value)
        if value == ignore_label or not 0 <= value < len(names):
            continue
        mask = (label == value).astype(np.uint8)
        color = [c / 255 for c in metadata.stuff_colors[value]]
        if names[value] not in unseen_set:
            vis.draw_binary_mask(mask, color=color, edge_color=_SEEN_EDGE, alpha=alpha)
            _draw_name(vis, mask, names[value], color)
            continue
        vis.draw_binary_mask(mask, color=color, edge_color=None, alpha=alpha / 3)
        ax = vis.output.ax
        ax.imshow(
            _stripes(mask, color, scale),
            extent=(0, vis.output.width, vis.output.height, 0),
            interpolation="nearest",
        )
        for polygon in GenericMask(mask, *mask.shape).polygons:
            xy = polygon.reshape(-1, 2)
            ax.add_artist(  # add_patch less its data-limit update (OverlayVisualizer)
                patches.Polygon(
                    xy,
                    fill=False,
                    edgecolor=_UNSEEN_EDGE,
                    linestyle="--",
                    linewidth=2.0,
                )
            )
        _draw_name(vis, mask, names[value] + UNSEEN_SUFFIX, color)
    return vis.output


def _draw_name(vis: Visualizer, mask: np.ndarray, text: str, color: Sequence[float]) -> None:
    """Write a class name on the largest part of its mask, kept inside the image.

    detectron2 centres names on the part's median pixel, which cuts names of regions at
    the border off; the centre is moved inwards by the name's estimated half size.
    """
    _, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if len(stats) < 2:
        return
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    ys, xs = np.nonzero(components == largest)
    x, y = float(np.median(xs)), float(np.median(ys))
    # draw_text's size is in points at the drawing's scale; in image pixels it is:
    font_px = vis._default_font_size * vis.output.dpi / _POINTS_PER_INCH
    half_w, half_h = 0.32 * len(text) * font_px + 2, 0.7 * font_px + 2
    h, w = mask.shape
    x = min(max(x, half_w), w - half_w) if w > 2 * half_w else w / 2
    y = min(max(y, half_h), h - half_h) if h > 2 * half_h else h / 2
    # lighter than the fill, as detectron2 writes names on its dark text boxes
    hue, light, sat = colorsys.rgb_to_hls(*color)
    vis.draw_text(text, (x, y), color=colorsys.hls_to_rgb(hue, min(1.0, light * 1.7), sat))
