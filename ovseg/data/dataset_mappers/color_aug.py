"""SSD's photometric distortion as a detectron2 augmentation, computed as the official code
computes it.

detectron2's ``ColorAugSSDTransform`` (``projects/PointRend/point_rend/color_augmentation.py``,
what Mask2Former's and FreeSeg's ``INPUT.COLOR_AUG_SSD`` runs) and mmseg's
``PhotoMetricDistortion`` (``mmseg/datasets/pipelines/transforms.py``, ZegCLIP's and
MaskCLIP+'s) are the same steps: a brightness offset, then the contrast either first or last,
around a saturation change and a hue shift, each drawn with probability 0.5. Every step is
``convert``: float32 arithmetic, clipped to [0, 255] and truncated to uint8 (``astype``, not
rounded); saturation and hue each convert the image to OpenCV's uint8 HSV and back (two round
trips when both are drawn), and the hue shift is a whole number of OpenCV hue units (180 = a
full turn). The one difference between the two: detectron2 draws the shift from [-18, 18]
(Python's ``random.randint``), mmseg from [-18, 17] (numpy's, whose upper bound is
excluded); ``hue_range`` chooses (``INPUT.COLOR_AUG_HUE_RANGE``).

The random parameters are drawn by :class:`ColorAugSSD` and applied by a deterministic
:class:`PhotometricDistortTransform`, so geometry and labels are untouched and a transform
can be replayed.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from detectron2.data import transforms as T

from ...utils.choices import check_choice

__all__ = ["HUE_RANGES", "ColorAugSSD", "PhotometricDistortTransform", "convert"]

_LEVELS = np.arange(256, dtype=np.uint8)

# the hue shift's draw for a delta d: detectron2's ColorAugSSDTransform draws from [-d, d]
# (Python's random.randint, projects/PointRend/point_rend/color_augmentation.py), mmseg's
# PhotoMetricDistortion from [-d, d - 1] (numpy's randint excludes its upper bound:
# mmsegmentation 0.24.0 mmseg/datasets/pipelines/transforms.py:7, :931)
HUE_RANGES = ("detectron2", "mmseg")
_HUE_HINT = "'detectron2' draws the hue shift from [-18, 18], 'mmseg' from [-18, 17]"


def convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """The official step: ``values * alpha + beta`` in float32, clipped to [0, 255], then
    truncated to uint8."""
    out = values.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


class PhotometricDistortTransform(T.Transform):
    """Brightness, contrast, saturation and hue changes of a uint8 image.

    Args:
        brightness (float): added to every channel, in 0-255 units (0: not drawn).
        contrast (float): multiplies every channel (1: not drawn).
        saturation (float, optional): multiplies the HSV saturation; None: not drawn.
        hue (int, optional): added to the HSV hue, in OpenCV units (180 = a full turn);
            None: not drawn (a drawn 0 still converts to HSV and back, as officially).
        contrast_last (bool): apply the contrast after the HSV changes instead of before.
        img_format (str): "RGB" or "BGR", the channel order of the images given.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 1.0,
        saturation: Optional[float] = None,
        hue: Optional[int] = None,
        contrast_last: bool = False,
        img_format: str = "RGB",
    ):
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"ColorAugSSD supports RGB or BGR images, not {img_format!r}")
        if hue is not None and int(hue) != hue:
            raise ValueError(f"the hue shift is a whole number of OpenCV units, got {hue}")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"ColorAugSSD needs a uint8 (H, W, 3) image, got {img.dtype} {img.shape}"
            )
        # Every step but the colour-space conversions maps one uint8 value to one uint8 value
        # (per channel in HSV), so each runs as a 256-entry lookup table of the official
        # arithmetic: the same bytes as the arithmetic on every pixel, at a fraction of the
        # time (tests/data/test_fast_mapper.py keeps the per-pixel version).
        table = convert(_LEVELS, beta=self.brightness)
        if not self.contrast_last:
            table = convert(table, alpha=self.contrast)
        out = cv2.LUT(img, table)
        if self.saturation is not None:
            out = self._in_hsv(out, 1, convert(_LEVELS, alpha=self.saturation))
        if self.hue is not None:
            shifted = (_LEVELS.astype(np.int64) + int(self.hue)) % 180
            out = self._in_hsv(out, 0, shifted.astype(np.uint8))
        if self.contrast_last:
            out = cv2.LUT(out, convert(_LEVELS, alpha=self.contrast))
        return out

    def _in_hsv(self, img: np.ndarray, channel: int, table: np.ndarray) -> np.ndarray:
        """``img`` with HSV ``channel`` (0 hue, 1 saturation) mapped through ``table``, in
        OpenCV's uint8 HSV and back."""
        rgb = self.img_format == "RGB"
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV if rgb else cv2.COLOR_BGR2HSV)
        tables = np.stack([_LEVELS] * 3, axis=-1)
        tables[:, channel] = table
        hsv = cv2.LUT(hsv, tables.reshape(1, 256, 3))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB if rgb else cv2.COLOR_HSV2BGR)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class ColorAugSSD(T.Augmentation):
    """SSD's photometric distortion: each change is applied with probability 0.5.

    Args:
        img_format (str): "RGB" or "BGR".
        brightness_delta (float): brightness offset drawn from [-delta, delta].
        contrast_range (tuple[float, float]): contrast factor range.
        saturation_range (tuple[float, float]): saturation factor range.
        hue_delta (int): whole hue offset (OpenCV units) drawn from [-delta, delta]
            ("detectron2") or [-delta, delta - 1] ("mmseg"), as ``hue_range`` says.
        hue_range (str): one of :data:`HUE_RANGES`.
    """

    def __init__(
        self,
        img_format: str = "RGB",
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        hue_range: str = "detectron2",
    ):
        super().__init__()
        check_choice(hue_range, HUE_RANGES, "INPUT.COLOR_AUG_HUE_RANGE", _HUE_HINT)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> PhotometricDistortTransform:
        def maybe(draw, neutral):
            return draw() if np.random.rand() < 0.5 else neutral

        delta = int(self.hue_delta)
        high = delta + 1 if self.hue_range == "detectron2" else delta  # randint excludes it
        return PhotometricDistortTransform(
            brightness=maybe(
                lambda: np.random.uniform(-self.brightness_delta, self.brightness_delta), 0.0
            ),
            contrast=maybe(lambda: np.random.uniform(*self.contrast_range), 1.0),
            saturation=maybe(lambda: np.random.uniform(*self.saturation_range), None),
            hue=maybe(lambda: int(np.random.randint(-delta, high)), None),
            contrast_last=bool(np.random.rand() < 0.5),
            img_format=self.img_format,
        )
