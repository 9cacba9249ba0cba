"""The semantic mappers' training augmentations (``INPUT.TRAIN_AUGMENTATION``):

- "crop" (Mask2Former's semantic pipeline): the resize (``INPUT.RESIZE_*``), the crop with its
  category-area rule (``INPUT.CROP``), SSD colour jitter (``INPUT.COLOR_AUG_SSD``) and a
  horizontal flip;
- "lsj" (large-scale jitter, Mask2Former's and FreeSeg's COCO "new baseline" mappers,
  FreeSeg ``coco_full_task_new_baseline_dataset_mapper.py:21-50``): a horizontal flip, the
  image rescaled to fit ``s`` x (``INPUT.CROP.SIZE``), ``s`` uniform in
  ``INPUT.LSJ_SCALE_RANGE`` (detectron2's ``ResizeScale``), a random window of the crop size
  (``FixedSizeCrop``); no colour jitter. ``FixedSizeCrop``'s padding of a smaller image to
  the crop size (128, labels ignore) is the mapper's: ``INPUT.SIZE_DIVISIBILITY`` the crop
  size with ``INPUT.IMAGE_PAD "gray"``, so masks pad with False.
"""

from __future__ import annotations

from typing import List

from detectron2.data import transforms as T

from ...utils.choices import check_choice
from .color_aug import ColorAugSSD
from .crop_count import CountedCategoryAreaCrop
from .fast_crop import CategoryAreaCrop
from .resize import training_resize

__all__ = ["TRAIN_AUGMENTATIONS", "training_augmentations"]

# INPUT.TRAIN_AUGMENTATION values
TRAIN_AUGMENTATIONS = ("crop", "lsj")


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
    kind = cfg.INPUT.get("TRAIN_AUGMENTATION", "crop")
    if check_choice(kind, TRAIN_AUGMENTATIONS, "INPUT.TRAIN_AUGMENTATION") == "lsj":
        return large_scale_jitter(cfg)
    augs: List[T.Augmentation] = [training_resize(cfg)]
    if crop.ENABLED:
        cls = CountedCategoryAreaCrop if counted else CategoryAreaCrop
        area = crop.SINGLE_CATEGORY_MAX_AREA
        fallback = crop.get("FALLBACK", "last_tried")
        augs.append(cls(crop.TYPE, crop.SIZE, area, ignore_label, fallback=fallback))
    if cfg.INPUT.COLOR_AUG_SSD:
        hue_range = cfg.INPUT.get("COLOR_AUG_HUE_RANGE", "detectron2")
        augs.append(ColorAugSSD(img_format=cfg.INPUT.FORMAT, hue_range=hue_range))
    augs.append(T.RandomFlip())
    return augs


def large_scale_jitter(cfg) -> List[T.Augmentation]:
    """Flip, ``ResizeScale`` and ``FixedSizeCrop`` without its padding (the mapper pads)."""
    size = tuple(int(v) for v in cfg.INPUT.CROP.SIZE)
    low, high = (float(v) for v in cfg.INPUT.LSJ_SCALE_RANGE)
    if cfg.INPUT.CROP.TYPE != "absolute" or len(size) != 2 or not 0 < low <= high:
        raise ValueError(
            "INPUT.TRAIN_AUGMENTATION 'lsj' needs INPUT.CROP.TYPE 'absolute' with a (H, W) "
            f"INPUT.CROP.SIZE and 0 < low <= high INPUT.LSJ_SCALE_RANGE; got "
            f"{cfg.INPUT.CROP.TYPE!r}, {list(cfg.INPUT.CROP.SIZE)}, {[low, high]}"
        )
    if cfg.INPUT.COLOR_AUG_SSD:
        raise ValueError(
            "INPUT.TRAIN_AUGMENTATION 'lsj' has no colour jitter (as the official mappers); "
            "set INPUT.COLOR_AUG_SSD False"
        )
    return [
        T.RandomFlip(),
        T.ResizeScale(min_scale=low, max_scale=high, target_height=size[0], target_width=size[1]),
        T.FixedSizeCrop(crop_size=size, pad=False),
    ]
