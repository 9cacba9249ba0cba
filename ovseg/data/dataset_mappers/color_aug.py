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
        out = img.astype(np.float32) + self.brightness
        if not self.contrast_last:
            out *= self.contrast
        if self.saturation != 1.0 or self.hue != 0.0:
            # OpenCV's uint8 HSV: hue in [0, 180), saturation in [0, 255].
            to_hsv, from_hsv = (
                (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)
                if self.img_format == "RGB"
                else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
            )
            hsv = cv2.cvtColor(np.clip(out, 0, 255).round().astype(np.uint8), to_hsv)
            hsv = hsv.astype(np.float32)
            hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 255)
            hsv[..., 0] = np.mod(hsv[..., 0] + self.hue, 180)
            out = cv2.cvtColor(hsv.round().astype(np.uint8), from_hsv).astype(np.float32)
        if self.contrast_last:
            out *= self.contrast
        return np.clip(out, 0, 255).round().astype(np.uint8)

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
