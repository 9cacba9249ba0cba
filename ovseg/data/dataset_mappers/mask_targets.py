# The panoptic and instance mappers follow Mask2Former's MaskFormerPanopticDatasetMapper and
# MaskFormerInstanceDatasetMapper (mask_former_{panoptic,instance}_dataset_mapper.py), re-written.
"""Mask-classification targets and the panoptic / instance / semantic-mask mappers.

Every mapper here adds ``"instances"`` to the semantic mapper's output: detectron2
``Instances`` of the (padded) sample size with ``gt_classes`` (long (N,), indices of the
sample's ``"vocabulary"``) and ``gt_masks`` (bool (N, H, W)): one mask per class present for
semantic data, per thing for instance data, per segment for panoptic data. Crowd regions
are never targets (Mask2Former), unseen classes are removed as the zero-shot setting says
(their pixels become background of every mask), and masks emptied by the crop are dropped.
``"sem_seg"`` stays, in training ids (derived from the segments when the dataset has no
semantic PNG), so the crop's category-area rule and pixel losses still work.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances

from ...utils.coco_masks import decode_segmentation
from ..image_io import LabelSizeError, read_image
from .build import MAPPER_REGISTRY
from .gt_polygons import add_gt_polygons, annotation_geometry, drop_empty_boxes
from .semantic import SemanticDatasetMapper, label_for_transforms

__all__ = [
    "InstanceDatasetMapper",
    "PanopticDatasetMapper",
    "SemanticMaskDatasetMapper",
    "mask_targets",
    "semantic_mask_targets",
]


def mask_targets(
    masks: Iterable[torch.Tensor], classes: Iterable[int], image_size: tuple[int, int]
) -> Instances:
    """Instances with ``gt_classes`` (long (N,)) and ``gt_masks`` (bool (N, H, W)), the empty
    masks left out.

    Args:
        masks: (H, W) boolean tensors.
        classes: the class index of each mask.
        image_size: (H, W).
    """
    kept = [(m.bool(), int(c)) for m, c in zip(masks, classes) if bool(m.any())]
    out = Instances(tuple(image_size))
    out.gt_classes = torch.tensor([c for _, c in kept], dtype=torch.int64)
    out.gt_masks = (
        torch.stack([m for m, _ in kept])
        if kept
        else torch.zeros((0, *image_size), dtype=torch.bool)
    )
    return out


def semantic_mask_targets(sem_seg: torch.Tensor, ignore_label: int) -> Instances:
    """One target per class present in a (H, W) label map, in increasing class order."""
    classes = [int(c) for c in torch.unique(sem_seg) if int(c) != ignore_label]
    return mask_targets((sem_seg == c for c in classes), classes, tuple(sem_seg.shape))


def _training_class(label_map: Optional[np.ndarray], category: int) -> int:
    return int(label_map[category]) if label_map is not None else int(category)


@MAPPER_REGISTRY.register(name="ovseg_semantic_mask")
class SemanticMaskDatasetMapper(SemanticDatasetMapper):
    """The semantic mapper, plus one mask target per class present (``"instances"``)."""

    def __call__(self, dataset_dict: dict) -> dict:
        out = super().__call__(dataset_dict)
        if "sem_seg" in out:
            out["instances"] = semantic_mask_targets(out["sem_seg"], self.ignore_label)
        return out


class _SegmentMapper(SemanticDatasetMapper):
    """Shared flow: per-segment masks at the original size -> augment -> pad -> targets."""

    def _segments(self, dataset_dict: dict, image: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """(mask (H, W) bool, training class) of every non-crowd, kept segment."""
        raise NotImplementedError

    #: the record key this mapper's segments come from
    segments_key = ""

    def _gt_geometry(self, dataset_dict: dict, image: np.ndarray) -> Optional[list]:
        """Each kept segment's polygons and box (:mod:`.gt_polygons`), or None: not used."""
        return None

    def __call__(self, dataset_dict: dict) -> dict:
        if not self.is_train and self.segments_key not in dataset_dict:
            # a test set of another kind (COCO-Stuff's semantic set evaluating a panoptic-
            # trained FreeSeg): the model reads the image only, its evaluator the label files
            return super().__call__(dataset_dict)
        dataset_dict = dict(dataset_dict)
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        segments = self._segments(dataset_dict, image)
        geometry = self._gt_geometry(dataset_dict, image) if self.is_train else None
        sem_file = dataset_dict.pop("sem_seg_file_name", None)
        sem_seg = self._read_label(sem_file, image, "sem_seg_file_name")
        if sem_seg is not None and self.is_train and self.label_map is not None:
            sem_seg = self._remap(sem_seg, self.label_map, sem_file)
        if sem_seg is None:
            sem_seg = np.full(image.shape[:2], self.ignore_label, dtype=np.int64)
            for mask, cls in segments:
                sem_seg[mask] = cls
        aug_input = T.AugInput(image, sem_seg=label_for_transforms(sem_seg))
        transforms = self.augmentations(aug_input)
        size = aug_input.image.shape[:2]
        masks = [
            torch.from_numpy(transforms.apply_segmentation(m.astype(np.uint8)) > 0)
            for m, _ in segments
        ]
        image_t = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        sem_t = torch.as_tensor(np.ascontiguousarray(aug_input.sem_seg).astype(np.int64))
        if self.is_train and self.size_divisibility > 0:
            image_t = self._pad(image_t, self.image_pad_value)
            sem_t = self._pad(sem_t, self.ignore_label)
            masks = [self._pad(m, 0) for m in masks]
            size = tuple(image_t.shape[-2:])
        for key in ("pan_seg_file_name", "segments_info", "annotations"):
            dataset_dict.pop(key, None)
        dataset_dict.update(image=image_t, sem_seg=sem_t, **self.identity())
        dataset_dict["instances"] = mask_targets(masks, [c for _, c in segments], size)
        if geometry is not None:
            rows = [i for i, m in enumerate(masks) if bool(m.any())]  # as mask_targets keeps
            moved = aug_input.image.shape[:2]
            inst = dataset_dict["instances"]
            add_gt_polygons(inst, geometry, rows, transforms, moved, self.legacy_boxes)
            dataset_dict["instances"] = drop_empty_boxes(inst, geometry, rows, self.legacy_boxes)
        if self.is_train:
            dataset_dict["transforms"] = transforms
        return dataset_dict

    def _kept(self, category: int, crowd: int) -> Optional[int]:
        """The training class of a segment, or None for crowd and removed (unseen) ones."""
        if crowd:
            return None
        table = self.label_map if self.is_train else None
        if table is not None and not 0 <= category < len(table):
            raise ValueError(f"Category {category} is outside the label map of the dataset")
        cls = _training_class(table, category)
        return None if cls == self.ignore_label else cls


@MAPPER_REGISTRY.register(name="ovseg_panoptic")
class PanopticDatasetMapper(_SegmentMapper):
    """Panoptic dicts (``pan_seg_file_name``, ``segments_info``) -> one target per segment.
    A test record of another kind (no ``pan_seg_file_name``) is mapped as the semantic mapper
    maps it."""

    segments_key = "pan_seg_file_name"

    def _segments(self, dataset_dict, image):
        if "pan_seg_file_name" not in dataset_dict:
            raise ValueError(
                f"{dataset_dict['file_name']!r} has no 'pan_seg_file_name': the panoptic "
                "mapper needs a panoptic dataset (e.g. coco_2017_train_panoptic_with_sem_seg)"
            )
        rgb = read_image(dataset_dict["pan_seg_file_name"], "RGB").astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        if ids.shape != image.shape[:2]:  # a DataFileError: named with its dataset, one line
            raise LabelSizeError(
                f"panoptic label {dataset_dict['pan_seg_file_name']!r} is "
                f"{ids.shape[1]}x{ids.shape[0]} (WxH) but its image is "
                f"{image.shape[1]}x{image.shape[0]}; a label must have its image's size: "
                "convert the label again, or remove the image and its label from the dataset"
            )
        out = []
        for seg in dataset_dict["segments_info"]:
            cls = self._kept(seg["category_id"], seg.get("iscrowd", 0))
            if cls is not None:
                out.append((ids == seg["id"], cls))
        return out


@MAPPER_REGISTRY.register(name="ovseg_instance")
class InstanceDatasetMapper(_SegmentMapper):
    """COCO-format instance dicts (``annotations`` with polygons or RLE) -> one target per
    thing; ``"sem_seg"`` is painted from the things in annotation order. With ``gt_polygons``
    training targets also carry the annotations' polygons and boxes (:mod:`.gt_polygons`).
    A test record without ``annotations`` is mapped as the semantic mapper maps it."""

    segments_key = "annotations"

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        gt_polygons: bool = False,
        legacy_boxes: bool = False,
        **kwargs,
    ):
        """
        Args:
            is_train (bool): training or test mapping.
            gt_polygons (bool): training targets get ``gt_polygons`` and the annotations'
                ``gt_boxes`` (MODEL.XPM.GT_POLYGONS).
            legacy_boxes (bool): those move as maskrcnn_benchmark moves them
                (MODEL.XPM.LEGACY_BOXES).
            kwargs: the semantic mapper's arguments.
        """
        super().__init__(is_train, **kwargs)
        self.gt_polygons = bool(gt_polygons)
        self.legacy_boxes = bool(legacy_boxes)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: Optional[str] = None):
        ret = super().from_config(cfg, is_train, dataset_name)
        ret["gt_polygons"] = cfg.MODEL.XPM.GT_POLYGONS
        ret["legacy_boxes"] = cfg.MODEL.XPM.LEGACY_BOXES
        return ret

    def _kept_annotations(self, dataset_dict) -> list:
        """(annotation, training class) of every non-crowd, kept annotation."""
        out = []
        for obj in dataset_dict.get("annotations", []):
            cls = self._kept(obj["category_id"], obj.get("iscrowd", 0))
            if cls is not None:
                out.append((obj, cls))
        return out

    def _segments(self, dataset_dict, image):
        h, w = image.shape[:2]
        return [
            (decode_segmentation(o["segmentation"], h, w, dataset_dict["file_name"]), c)
            for o, c in self._kept_annotations(dataset_dict)
        ]

    def _gt_geometry(self, dataset_dict, image):
        if not self.gt_polygons:
            return None
        name, size = dataset_dict["file_name"], image.shape[:2]
        return [annotation_geometry(o, size, name) for o, _ in self._kept_annotations(dataset_dict)]


def target_classes(instances: Instances, vocabulary: Sequence[str]) -> list[str]:
    """The class names of a sample's targets (for tests and debugging)."""
    return [vocabulary[int(c)] for c in instances.gt_classes]
