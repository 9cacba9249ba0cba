"""detectron2's category-area random crop, with the class histogram of each try counted
by ``np.bincount`` instead of ``np.unique`` (a sort of every pixel of the crop).

Same random draws, same windows, same decision: only the counting is faster. Optionally
(``INPUT.CROP.FALLBACK "another"``) the crop falls back as mmseg's ``RandomCrop`` does when no
window passes: an 11th window, not checked (MaskCLIP's copy of mmseg,
``mmseg/datasets/pipelines/transforms.py:605-615``), instead of the 10th, rejected, one.
"""

from __future__ import annotations

import numpy as np

from detectron2.data import transforms as T

from ...utils.choices import check_choice

__all__ = ["CROP_FALLBACKS", "CategoryAreaCrop"]

# INPUT.CROP.FALLBACK: when no window passes, keep the last one tried (detectron2) or draw
# another, unchecked (mmseg)
CROP_FALLBACKS = ("last_tried", "another")


class CategoryAreaCrop(T.RandomCrop_CategoryAreaConstraint):
    """``RandomCrop_CategoryAreaConstraint`` (same arguments): up to 10 random windows,
    the first in which no class other than ``ignored_category`` covers
    ``single_category_max_area`` or more of the counted pixels, and at least two classes
    are present (else the last window tried, or with ``fallback="another"`` an 11th)."""

    def __init__(self, *args, fallback: str = "last_tried", **kwargs):
        """
        Args:
            args, kwargs: ``RandomCrop_CategoryAreaConstraint``'s (crop type, crop size,
                single_category_max_area, ignored_category).
            fallback (str): one of :data:`CROP_FALLBACKS`.
        """
        super().__init__(*args, **kwargs)
        hint = "'last_tried' (detectron2) or 'another' (mmseg: an 11th window, unchecked)"
        self.fallback = check_choice(fallback, CROP_FALLBACKS, "INPUT.CROP.FALLBACK", hint)

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray) -> T.Transform:
        if self.single_category_max_area >= 1.0 or (
            sem_seg.dtype != np.uint8 and self.fallback == "last_tried"
        ):
            # no constraint, or a wide label map (float64 for the transforms): as detectron2
            return super().get_transform(image, sem_seg)
        h, w = sem_seg.shape
        for _ in range(10):
            y0, x0, crop_size = self._window(h, w)
            if self._passes(sem_seg[y0 : y0 + crop_size[0], x0 : x0 + crop_size[1]]):
                break
        else:
            if self.fallback == "another":
                y0, x0, crop_size = self._window(h, w)
        return T.CropTransform(x0, y0, crop_size[1], crop_size[0])

    def _window(self, h: int, w: int):
        """A random window's (y0, x0, (crop height, crop width)), drawn as detectron2 draws."""
        crop_size = self.crop_aug.get_crop_size((h, w))
        y0 = np.random.randint(h - crop_size[0] + 1)
        x0 = np.random.randint(w - crop_size[1] + 1)
        return y0, x0, crop_size

    def _passes(self, window: np.ndarray) -> bool:
        """At least two classes, none covering the maximum share of the counted pixels."""
        ignored = self.ignored_category
        if window.dtype == np.uint8:
            counts = np.bincount(window.ravel(), minlength=256)
            if ignored is not None and 0 <= ignored < 256:
                counts[ignored] = 0
            present = counts[counts > 0]
        else:  # a wide label map: detectron2's own count
            labels, present = np.unique(window, return_counts=True)
            if ignored is not None:
                present = present[labels != ignored]
        max_area = self.single_category_max_area
        return len(present) > 1 and np.max(present) < np.sum(present) * max_area
