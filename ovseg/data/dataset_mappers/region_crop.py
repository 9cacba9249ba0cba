# Follows the official FreeSeg prompt-stage mappers (mask2former/data/dataset_mappers/
# mask_former_binary_{full,semantic}_dataset_mapper.py:65-93) and their augmentations
# (mask2former/data/augmentations.py:14-199), re-written.
"""The region mapper of FreeSeg's prompt stage: one region record -> its crop.

A record (:mod:`ovseg.data.region_sampling`: an image dict plus ``"region_class"`` and
``"task"``) becomes the crop of its region:

1. the region's mask at the image's size: the union of the record's segments of
   ``region_class`` (its one segment for ``ins_seg``/``pan_seg`` records, every segment of
   the class for ``sem_seg``), read by ovseg's panoptic / instance / semantic-mask mapper
   without augmentation;
2. the crop of the mask's box, expanded about its centre by ``expand_ratio`` and clipped to
   the image (official ``CropImageWithMask(MODEL.CLIP_ADAPTER.MASK_EXPAND_RATIO)``,
   ``binary_full_dataset_mapper.py:69``, ``augmentations.py:27-65``);
3. training: a random resized crop to ``train_size`` (area 8-100%, aspect 3/4-4/3 in log
   space, ten tries then a centre crop; bilinear, the mask nearest;
   ``augmentations.py:92-152``) and a horizontal flip with probability 0.5
   (``binary_full_dataset_mapper.py:71-72``); test: a centre crop of ``test_size`` squared,
   padded (image 0, mask outside) where the crop is smaller (``CenterCrop(MIN_SIZE_TEST)``,
   ``binary_full_dataset_mapper.py:81``, ``augmentations.py:155-199``).

The output: ``"image"`` (uint8 (3, h, w)), ``"instances"`` with one mask (``gt_masks``
bool (1, h, w)) and its class (``gt_classes`` (1,), an index of ``"vocabulary"``),
``"vocabulary"``, ``"task"``, ``"region_class"`` and the record's other keys. A training
region that the random crop misses maps to None: the loader draws another record, as
the official mapper does (``binary_semantic_dataset_mapper.py:174-175``). A test region is
never dropped, so every region of a test set is scored once (the official test mapper's
None would make detectron2's loader substitute a random other record).

Difference: the official crop's far edge is clipped at W - 1 / H - 1 and its corners
truncated (``augmentations.py:33-42``), which drops the last column or row of a mask that
touches the border; here the expanded box is rounded outwards and clipped at W / H, so the
crop holds the whole mask.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from fvcore.transforms.transform import PadTransform
from PIL import Image

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Instances

from ...vocab import normalize_name
from .build import MAPPER_REGISTRY
from .mask_targets import InstanceDatasetMapper, PanopticDatasetMapper, SemanticMaskDatasetMapper

__all__ = [
    "CenterCropPad",
    "CropAroundMask",
    "RandomResizedCrop",
    "RegionCropDatasetMapper",
    "expanded_box",
]


def expanded_box(mask: np.ndarray, expand_ratio: float) -> Optional[Tuple[int, int, int, int]]:
    """(x0, y0, w, h) of ``mask``'s box scaled by ``expand_ratio`` about its centre, rounded
    outwards and clipped to the image; None for an empty mask."""
    cols, rows = np.nonzero(mask.any(axis=0))[0], np.nonzero(mask.any(axis=1))[0]
    if len(cols) == 0:
        return None
    height, width = mask.shape[:2]
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) * expand_ratio / 2, (y1 - y0) * expand_ratio / 2
    left, top = max(0, math.floor(cx - hw)), max(0, math.floor(cy - hh))
    right, bottom = min(width, math.ceil(cx + hw)), min(height, math.ceil(cy + hh))
    return left, top, max(right - left, 1), max(bottom - top, 1)


class CropAroundMask(T.Augmentation):
    """Crop the box of the region mask (``sem_seg`` > 0), expanded by ``expand_ratio``."""

    def __init__(self, expand_ratio: float = 1.0):
        if not expand_ratio >= 1:  # the test-time crops' rule (mask_crops): the box grows
            raise ValueError(
                f"MODEL.FREESEG.MASK_EXPAND_RATIO must be >= 1 (the mask's box grows about "
                f"its centre; 1.0 is the official value), got {expand_ratio}"
            )
        self.expand_ratio = float(expand_ratio)

    def get_transform(self, image, sem_seg):
        box = expanded_box(sem_seg > 0, self.expand_ratio)
        if box is None:
            raise ValueError("the region's mask is empty before the crop; nothing to crop")
        height, width = image.shape[:2]
        return T.CropTransform(*box, width, height)


class RandomResizedCrop(T.Augmentation):
    """torchvision's RandomResizedCrop as a detectron2 augmentation (official
    ``augmentations.py:92-152``): a crop of ``scale`` of the area and an aspect ratio drawn
    log-uniformly from ``ratio`` (ten tries, then the largest centre crop within ``ratio``),
    resized to ``size`` (H, W) bilinearly."""

    def __init__(
        self,
        size: Tuple[int, int],
        scale: Tuple[float, float] = (0.08, 1.0),
        ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    ):
        self.size = (int(size[0]), int(size[1]))
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def _window(self, height: int, width: int) -> Tuple[int, int, int, int]:
        area, log_ratio = height * width, np.log(np.array(self.ratio))
        for _ in range(10):
            target = area * np.random.uniform(*self.scale)
            aspect = math.exp(np.random.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return (
                    np.random.randint(0, width - w + 1),
                    np.random.randint(0, height - h + 1),
                    w,
                    h,
                )
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def get_transform(self, image):
        height, width = image.shape[:2]
        x, y, w, h = self._window(height, width)
        return T.TransformList(
            [
                T.CropTransform(x, y, w, h, width, height),
                T.ResizeTransform(h, w, self.size[0], self.size[1], interp=Image.BILINEAR),
            ]
        )


class CenterCropPad(T.Augmentation):
    """The centre ``size`` (H, W) of an image, zero-padded (labels 0) where it is smaller
    (official ``CenterCrop``, ``augmentations.py:155-199``; no resize)."""

    def __init__(self, size: Tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def get_transform(self, image):
        height, width = image.shape[:2]
        crop_h, crop_w = self.size
        transforms = []
        if crop_w > width or crop_h > height:
            pad_w, pad_h = max(crop_w - width, 0), max(crop_h - height, 0)
            pad = (pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2)
            transforms.append(PadTransform(*pad, orig_w=width, orig_h=height))
            width, height = width + pad_w, height + pad_h
        top, left = int(round((height - crop_h) / 2)), int(round((width - crop_w) / 2))
        transforms.append(T.CropTransform(left, top, crop_w, crop_h, width, height))
        return T.TransformList(transforms)


@MAPPER_REGISTRY.register(name="ovseg_region")
class RegionCropDatasetMapper:
    """Region record -> the crop of its region (see the module docstring)."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: Sequence[T.Augmentation],
        semantic: SemanticMaskDatasetMapper,
        panoptic: PanopticDatasetMapper,
        instance: InstanceDatasetMapper,
        class_names: Sequence[str],
    ):
        """
        Args:
            is_train (bool): training (random crop, flip; a missed region maps to None) or test.
            augmentations: applied to the image and the region mask, in order.
            semantic, panoptic, instance: ovseg's mask mappers, without augmentation, that
                read a record's masks (chosen by the record's keys) and its vocabulary.
            class_names: the ids the test masks' classes refer to (the dataset's
                ``stuff_classes``; training masks index the mappers' vocabulary).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.semantic, self.panoptic, self.instance = semantic, panoptic, instance
        self.class_names = tuple(class_names)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: Optional[str] = None):
        fs = cfg.MODEL.FREESEG
        augs: list = [CropAroundMask(fs.MASK_EXPAND_RATIO)]
        if is_train:
            augs += [RandomResizedCrop(tuple(fs.PROMPT_TRAIN_SIZE)), T.RandomFlip()]
        else:
            augs.append(CenterCropPad((fs.PROMPT_TEST_SIZE, fs.PROMPT_TEST_SIZE)))
        inner = {}
        for key, mapper in (
            ("semantic", SemanticMaskDatasetMapper),
            ("panoptic", PanopticDatasetMapper),
            ("instance", InstanceDatasetMapper),
        ):
            args = mapper.from_config(cfg, is_train, dataset_name)
            inner[key] = mapper(**{**args, "augmentations": [], "size_divisibility": -1})
        name = dataset_name or (cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)[0]
        classes = MetadataCatalog.get(name).get("stuff_classes", None) or ()
        return {"is_train": is_train, "augmentations": augs, "class_names": classes, **inner}

    def _inner(self, record: dict):
        if "segments_info" in record:
            return self.panoptic
        return self.instance if "annotations" in record else self.semantic

    def region_mask(self, record: dict) -> Tuple[dict, np.ndarray, int]:
        """The record mapped at its image's size, its region's mask (H, W) bool and the
        region's class index in the output vocabulary."""
        region = record.get("region_class")
        if region is None:
            raise ValueError(
                f"{record.get('file_name', '')!r} is not a region record (no 'region_class'): "
                "the ovseg_region mapper maps the records of ovseg.data.region_sampling "
                "(training) or of a '<split>_regions' test set"
            )
        out = self._inner(record)(dict(record))
        vocabulary = out["vocabulary"]
        ids = vocabulary if self.is_train or not self.class_names else self.class_names
        key = normalize_name(region)
        where = [i for i, n in enumerate(ids) if normalize_name(n) == key]
        target = [i for i, n in enumerate(vocabulary) if normalize_name(n) == key]
        if not where or not target:
            raise ValueError(
                f"region class {region!r} of {record.get('file_name', '')!r} is not in the "
                f"vocabulary ({len(vocabulary)} names); check the dataset's classes"
            )
        inst = out["instances"]
        masks = inst.gt_masks[inst.gt_classes == where[0]]
        return out, masks.any(dim=0).numpy(), target[0]

    def __call__(self, record: dict) -> Optional[dict]:
        out, mask, cls = self.region_mask(record)
        if not mask.any():
            raise ValueError(
                f"region {record.get('region_class')!r} of {record.get('file_name', '')!r} has "
                "no pixel in its labels; region records must come from the same labels"
            )
        image = out["image"].permute(1, 2, 0).numpy()
        aug = T.AugInput(image, sem_seg=mask.astype(np.uint8))
        self.augmentations(aug)
        crop = torch.from_numpy(np.ascontiguousarray(aug.sem_seg > 0))
        if self.is_train and not crop.any():
            return None  # the random crop missed the region: the loader draws another
        inst = Instances(tuple(crop.shape))
        inst.gt_masks, inst.gt_classes = crop[None], torch.tensor([cls], dtype=torch.int64)
        for key in ("sem_seg", "transforms", "instances"):
            out.pop(key, None)
        out["image"] = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
        out["instances"] = inst
        return out
