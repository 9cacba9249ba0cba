# Follows mmseg's Resize(img_scale, ratio_range, keep_ratio=True) and mmcv's rescale_size, as
# the official MaskCLIP+ training pipelines use them, re-written as a detectron2 augmentation.
"""``RatioRangeResize``: mmseg's training resize, for configs that reproduce mmseg recipes.

mmseg draws ``r ~ U(ratio_range)``, scales the box ``img_scale`` by it and rescales the image,
keeping its aspect ratio, to the largest size whose long side fits the box's long side and
whose short side fits its short side. With ``img_scale (2048, 512)`` the short side becomes
``512 r`` (unless the long one would pass ``2048 r``); with ``(520, 520)`` (PASCAL Context)
the long side becomes ``520 r``, which detectron2's ``ResizeShortestEdge`` cannot express.
Chosen by ``INPUT.RESIZE_IMG_SCALE`` (non-empty) and ``INPUT.RESIZE_RATIO_RANGE``.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from PIL import Image

from detectron2.data import transforms as T

__all__ = ["RatioRangeResize", "rescaled_size", "training_resize"]


def rescaled_size(height: int, width: int, box: Sequence[float]) -> Tuple[int, int]:
    """The (height, width) mmcv's ``rescale_size`` gives an image fitted into ``box``.

    Args:
        height, width (int): the image's size.
        box: two sizes, in any order: the long side's and the short side's largest.

    Returns:
        tuple[int, int]: the new (height, width), rounded half up.
    """
    factor = min(max(box) / max(height, width), min(box) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class RatioRangeResize(T.Augmentation):
    """Resize to fit ``img_scale * r``, ``r`` uniform in ``ratio_range``, keeping the ratio."""

    def __init__(
        self,
        img_scale: Sequence[int],
        ratio_range: Sequence[float] = (0.5, 2.0),
        interp: int = Image.BILINEAR,
    ):
        """
        Args:
            img_scale: mmseg's ``img_scale``, two sizes (e.g. (2048, 512) or (520, 520)).
            ratio_range: the (low, high) range of the ratio ``r``.
            interp: PIL interpolation of the image (labels use nearest).
        """
        super().__init__()
        if len(img_scale) != 2 or min(img_scale) <= 0:
            raise ValueError(
                f"INPUT.RESIZE_IMG_SCALE must hold two positive sizes, got {list(img_scale)}"
            )
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(
                f"INPUT.RESIZE_RATIO_RANGE must be (low, high) with 0 < low <= high, got "
                f"{list(ratio_range)}"
            )
        self.img_scale = tuple(int(s) for s in img_scale)
        self.ratio_range = tuple(float(r) for r in ratio_range)
        self.interp = interp

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        low, high = self.ratio_range
        ratio = np.random.random_sample() * (high - low) + low
        box = [int(s * ratio) for s in self.img_scale]
        new_h, new_w = rescaled_size(h, w, box)
        return T.ResizeTransform(h, w, new_h, new_w, self.interp)


def training_resize(cfg) -> T.Augmentation:
    """The training resize a config asks for: :class:`RatioRangeResize` when
    ``INPUT.RESIZE_IMG_SCALE`` is set, else detectron2's ``ResizeShortestEdge`` from
    ``INPUT.MIN_SIZE_TRAIN`` / ``MAX_SIZE_TRAIN`` / ``MIN_SIZE_TRAIN_SAMPLING``."""
    if len(cfg.INPUT.RESIZE_IMG_SCALE) > 0:
        return RatioRangeResize(cfg.INPUT.RESIZE_IMG_SCALE, cfg.INPUT.RESIZE_RATIO_RANGE)
    return T.ResizeShortestEdge(
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    )
