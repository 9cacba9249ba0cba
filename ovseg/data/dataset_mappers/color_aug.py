"""SSD's photometric distortion as a detectron2 augmentation.

The random parameters are drawn by :class:`ColorAugSSD` and applied by a deterministic
:class:`PhotometricDistortTransform`, so geometry and labels are untouched and a transform
can be replayed.
"""

from __future__ import annotations

import cv2
import numpy as np

from detectron2.data import transforms as T

__all__ = ["ColorAugSSD", "PhotometricDistortTransform"]


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(values, 0, 255).round().astype(np.uint8)


class PhotometricDistortTransform(T.Transform):
    """Brightness, contrast, saturation and hue changes of a uint8 image.

    Args:
        brightness (float): added to every channel, in 0-255 units.
        contrast (float): multiplies every channel.
        saturation (float): multiplies the HSV saturation.
        hue (float): added to the HSV hue, in OpenCV units (180 = a full turn).
        contrast_last (bool): apply the contrast after the HSV changes instead of before.
        img_format (str): "RGB" or "BGR", the channel order of the images given.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 1.0,
        saturation: float = 1.0,
        hue: float = 0.0,
        contrast_last: bool = False,
        img_format: str = "RGB",
    ):
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"ColorAugSSD supports RGB or BGR images, not {img_format!r}")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"ColorAugSSD needs a uint8 (H, W, 3) image, got {img.dtype} {img.shape}"
            )
        # Every step maps one uint8 value to one uint8 value (per channel in HSV), so each
        # runs as a 256-entry lookup table computed by the float32 arithmetic the steps
        # define: the same bytes as applying that arithmetic to every pixel, at a fraction
        # of the time (tests/data/test_fast_mapper.py keeps the per-pixel version).
        levels = np.arange(256, dtype=np.uint8)
        if self.saturation == 1.0 and self.hue == 0.0:
            return cv2.LUT(img, self._after_hsv(self._before_hsv(levels)))
        out = cv2.LUT(img, _to_uint8(self._before_hsv(levels)))
        # OpenCV's uint8 HSV: hue in [0, 180), saturation in [0, 255].
        to_hsv, from_hsv = (
            (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)
            if self.img_format == "RGB"
            else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
        )
        hsv = cv2.cvtColor(out, to_hsv)
        channels = levels.astype(np.float32)
        hue = np.mod(channels + self.hue, 180)
        saturation = np.clip(channels * self.saturation, 0, 255)
        table = np.stack([_to_uint8(hue), _to_uint8(saturation), levels], axis=-1)
        out = cv2.cvtColor(cv2.LUT(hsv, table.reshape(1, 256, 3)), from_hsv)
        return cv2.LUT(out, self._after_hsv(levels.astype(np.float32)))

    def _before_hsv(self, values: np.ndarray) -> np.ndarray:
        """Brightness, then the contrast when it comes first: uint8 -> float32."""
        out = values.astype(np.float32) + self.brightness
        if not self.contrast_last:
            out *= self.contrast
        return out

    def _after_hsv(self, out: np.ndarray) -> np.ndarray:
        """The contrast when it comes last, then clipping and rounding: float32 -> uint8."""
        if self.contrast_last:
            out = out * self.contrast
        return _to_uint8(out)

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
        hue_delta (float): hue offset drawn from [-delta, delta] (OpenCV units).
    """

    def __init__(
        self,
        img_format: str = "RGB",
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> PhotometricDistortTransform:
        def maybe(draw, neutral):
            return draw() if np.random.rand() < 0.5 else neutral

        return PhotometricDistortTransform(
            brightness=maybe(
                lambda: np.random.uniform(-self.brightness_delta, self.brightness_delta), 0.0
            ),
            contrast=maybe(lambda: np.random.uniform(*self.contrast_range), 1.0),
            saturation=maybe(lambda: np.random.uniform(*self.saturation_range), 1.0),
            hue=maybe(lambda: np.random.uniform(-self.hue_delta, self.hue_delta), 0.0),
            contrast_last=bool(np.random.rand() < 0.5),
            img_format=self.img_format,
        )
