"""The semantic mappers' training augmentations, in order: the resize (``INPUT.RESIZE_*``),
the crop with its category-area rule (``INPUT.CROP``), SSD colour jitter
(``INPUT.COLOR_AUG_SSD``) and a horizontal flip."""

from __future__ import annotations

from typing import List

from detectron2.data import transforms as T

from .color_aug import ColorAugSSD
from .crop_count import CountedCategoryAreaCrop
from .fast_crop import CategoryAreaCrop
from .resize import training_resize

__all__ = ["training_augmentations"]


def training_augmentations(cfg, ignore_label: int, counted: bool = False) -> List[T.Augmentation]:
    """The training augmentations of ``cfg``.

    Args:
        cfg (CfgNode): an ovseg config.
        ignore_label (int): the label the crop's rule does not count.
        counted (bool): the crop decides on a separate counting label map
            (:class:`~ovseg.data.dataset_mappers.crop_count.CountedCategoryAreaCrop`,
            ``INPUT.CROP.CATEGORY_COUNT``) instead of the training labels.
    """
    crop = cfg.INPUT.CROP
    augs: List[T.Augmentation] = [training_resize(cfg)]
    if crop.ENABLED:
        cls = CountedCategoryAreaCrop if counted else CategoryAreaCrop
        area = crop.SINGLE_CATEGORY_MAX_AREA
        fallback = crop.get("FALLBACK", "last_tried")
        augs.append(cls(crop.TYPE, crop.SIZE, area, ignore_label, fallback=fallback))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSD(img_format=cfg.INPUT.FORMAT))
    augs.append(T.RandomFlip())
    return augs
