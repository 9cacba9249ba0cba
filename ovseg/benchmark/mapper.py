"""The training mapper against its per-pixel reference, timed in turns on the same files.

:func:`reference_mapper` rebuilds a :class:`~ovseg.data.dataset_mappers.SemanticDatasetMapper`
with the per-pixel steps its fast ones replace: detectron2's category-area crop (a
``np.unique`` per try), the official photometric distortion's arithmetic on every pixel,
the zero-shot remap by numpy indexing. For a seed both give the same bytes
(``tests/data/test_fast_mapper.py``); :func:`mapper_ratio` times them.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any, Dict

import cv2
import numpy as np

from detectron2.data import transforms as T

from ..data.dataset_mappers.color_aug import ColorAugSSD, PhotometricDistortTransform, convert
from ..data.dataset_mappers.crop_count import CountedCategoryAreaCrop
from ..data.dataset_mappers.fast_crop import CategoryAreaCrop
from .timing import interleaved

__all__ = ["mapper_ratio", "per_pixel_distortion", "reference_mapper"]


def per_pixel_distortion(tfm: PhotometricDistortTransform, img: np.ndarray) -> np.ndarray:
    """The photometric distortion as the official code runs it, on every pixel: detectron2's
    ``ColorAugSSDTransform.apply_image`` (``projects/PointRend/point_rend/
    color_augmentation.py``; mmseg's ``PhotoMetricDistortion`` the same) with ``tfm``'s
    draws: in BGR order, each step a float32 ``convert`` truncated to uint8, saturation and
    hue each a round trip through OpenCV's HSV."""
    out = img[:, :, ::-1] if tfm.img_format == "RGB" else img
    out = convert(out, beta=tfm.brightness)
    if not tfm.contrast_last:
        out = convert(out, alpha=tfm.contrast)
    if tfm.saturation is not None:
        hsv = cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=tfm.saturation)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if tfm.hue is not None:
        hsv = cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + int(tfm.hue)) % 180
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if tfm.contrast_last:
        out = convert(out, alpha=tfm.contrast)
    out = out[:, :, ::-1] if tfm.img_format == "RGB" else out
    return np.ascontiguousarray(out)


class _PerPixelTransform(PhotometricDistortTransform):
    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return per_pixel_distortion(self, img)


class _PerPixelColorAug(ColorAugSSD):
    def get_transform(self, image: np.ndarray) -> PhotometricDistortTransform:
        return _PerPixelTransform(**vars(super().get_transform(image)))


class _UniqueCountedCrop(T.RandomCrop_CategoryAreaConstraint):
    """detectron2's crop deciding on ``crop_counts``, as CountedCategoryAreaCrop does."""

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray, crop_counts: np.ndarray):
        return super().get_transform(image, crop_counts)


class _UniqueAnotherCrop(CategoryAreaCrop):
    """The crop with mmseg's fallback (``"another"``), each try counted by ``np.unique`` as
    detectron2 counts (the crop has no detectron2 original to compare with)."""

    def _passes(self, window: np.ndarray) -> bool:
        labels, present = np.unique(window, return_counts=True)
        if self.ignored_category is not None:
            present = present[labels != self.ignored_category]
        max_area = self.single_category_max_area
        return len(present) > 1 and np.max(present) < np.sum(present) * max_area


class _UniqueAnotherCountedCrop(_UniqueAnotherCrop):
    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray, crop_counts: np.ndarray):
        return super().get_transform(image, crop_counts)


def _reference_crop(aug: CategoryAreaCrop) -> T.Augmentation:
    """``aug`` as a per-pixel reference: detectron2's crop (or, with mmseg's fallback, its loop)
    counting each try with ``np.unique``; the same draws."""
    counted = isinstance(aug, CountedCategoryAreaCrop)
    args = (aug.crop_aug.crop_type, aug.crop_aug.crop_size, aug.single_category_max_area,
            aug.ignored_category)  # fmt: skip
    if aug.fallback == "another":
        crop = _UniqueAnotherCountedCrop if counted else _UniqueAnotherCrop
        return crop(*args, fallback="another")
    crop = _UniqueCountedCrop if counted else T.RandomCrop_CategoryAreaConstraint
    return crop(*args)


def _indexed_remap(label: np.ndarray, table: np.ndarray, path: str) -> np.ndarray:
    return table[label]


def reference_mapper(mapper):
    """A copy of ``mapper`` (a SemanticDatasetMapper) with the per-pixel steps instead of
    the fast ones; the same random draws, so the same outputs for a seed."""
    ref = copy.copy(mapper)
    augs = []
    for aug in mapper.augmentations.augs:
        if isinstance(aug, CategoryAreaCrop):
            aug = _reference_crop(aug)
        elif isinstance(aug, ColorAugSSD):
            aug = _PerPixelColorAug(aug.img_format, aug.brightness_delta, aug.contrast_range,
                                    aug.saturation_range, aug.hue_delta, aug.hue_range)  # fmt: skip
        augs.append(aug)
    ref.augmentations = T.AugmentationList(augs)
    ref._remap = _indexed_remap
    return ref


def mapper_ratio(config: str, images: int, repeats: int, size=(375, 500)) -> Dict[str, Any]:
    """A config's per-pixel reference mapper (a) against the mapper (b): seconds
    per image, medians of passes over the same synthetic files timed in turns."""
    from ..data import build_dataset_mapper
    from .config import benchmark_config
    from .mapper_files import synthetic_files
    from .shares import mapper_label_ids

    cfg = benchmark_config(config, device="cpu")
    mapper = build_dataset_mapper(cfg, True, cfg.DATASETS.TRAIN[0])
    old = reference_mapper(mapper)
    with tempfile.TemporaryDirectory() as tmp:
        dicts = synthetic_files(tmp, "", images, size, mapper_label_ids(mapper))

        def run(m):
            np.random.seed(0)
            for d in dicts:
                m(d)

        res = interleaved(lambda: run(old), lambda: run(mapper), repeats)
    return {"config": config, "images": images, "size": list(size),
            "a": "per-pixel reference mapper", "b": "mapper", **res,
            "a_ms_per_image": res["a_s"] * 1000 / images,
            "b_ms_per_image": res["b_s"] * 1000 / images}  # fmt: skip
