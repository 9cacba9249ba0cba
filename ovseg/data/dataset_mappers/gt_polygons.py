# Follows maskrcnn_benchmark's COCO ground truth as the official XPM release loads it
# (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423), re-written.
"""Ground-truth polygons and annotation boxes for the instance mappers (MODEL.XPM.GT_POLYGONS).

The official code trains on COCO's polygons and its ``bbox`` field
(``maskrcnn_benchmark/data/datasets/coco.py:111-130``, ``coco_cap_det.py:153-178``), not on
bitmasks and their extents. With the key, a training sample's ``"instances"`` also carry:

- ``gt_polygons`` (detectron2 ``PolygonMasks``, one entry per row): a ground-truth row's
  polygons moved by the sample's transforms; ``[]`` for a pseudo row (XPM's student mapper);
- ``gt_boxes`` of the ground-truth rows: the annotation's ``bbox``, moved the same way.

``gt_masks`` stay bitmasks for every row (the crop's category-area rule, pseudo rows, the
empty-target rule); the XPM models train their ground-truth masks on ``gt_polygons``.

Under MODEL.XPM.LEGACY_BOXES both follow maskrcnn_benchmark's +1 conventions (paths under
``maskrcnn_benchmark/``): the box is the inclusive ``(x, y, x + max(w - 1, 0), y +
max(h - 1, 0))`` (``structures/bounding_box.py:75-87``) clipped to ``[0, size - 1]`` at the
image's own size (``clip_to_image``, ``:214-219``), then resized (``:91-127``); a horizontal
flip maps ``x -> W - x - 1`` for boxes and polygons alike (``TO_REMOVE = 1``,
``bounding_box.py:144-147``, ``structures/segmentation_mask.py:258-268``), where detectron2's
``HFlipTransform`` maps ``x -> W - x``; all in float32 as the official tensors
(``segmentation_mask.py:225``). The box is stored with exclusive corners (``x2 + 1``,
``y2 + 1``), which the legacy model turns back into the inclusive one, once
(:func:`~ovseg.modeling.xpm.legacy.to_inclusive`). Without LEGACY_BOXES boxes and polygons
move as detectron2's ``transform_instance_annotations`` moves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances, PolygonMasks

__all__ = [
    "GTGeometry",
    "add_gt_polygons",
    "annotation_geometry",
    "drop_empty_boxes",
    "move_geometry",
    "official_keeps",
]


@dataclass
class GTGeometry:
    """One ground-truth annotation's polygons (float32 (2P,) each) and ``bbox`` (XYWH) in
    the coordinates of an image of ``image_size`` (H, W)."""

    polygons: List[np.ndarray]
    bbox: np.ndarray
    image_size: Tuple[int, int]


def annotation_geometry(obj: dict, image_size: Tuple[int, int], file_name: str) -> GTGeometry:
    """The polygons and box of a COCO-format annotation (detectron2's dataset dicts).

    Raises:
        ValueError: the segmentation is not a polygon list (RLE) or the box is missing.
    """
    segm = obj.get("segmentation")
    if not isinstance(segm, list):
        raise ValueError(
            f"{file_name!r}: an annotation's segmentation is {type(segm).__name__} (RLE), not "
            "a polygon list; MODEL.XPM.GT_POLYGONS trains on COCO's polygons as the official "
            "code: set MODEL.XPM.GT_POLYGONS False for RLE datasets"
        )
    if "bbox" not in obj:
        raise ValueError(
            f"{file_name!r}: an annotation has no 'bbox'; MODEL.XPM.GT_POLYGONS trains on "
            "COCO's annotation boxes (set it False to use the masks' extents)"
        )
    mode = obj.get("bbox_mode", BoxMode.XYWH_ABS)
    bbox = BoxMode.convert(np.asarray([obj["bbox"]], np.float64), mode, BoxMode.XYWH_ABS)[0]
    # fewer than 3 points: dropped, as the official PolygonInstance (segmentation_mask.py:226)
    polygons = [np.asarray(p, dtype=np.float32) for p in segm if len(p) >= 6]
    return GTGeometry(polygons, np.asarray(bbox, dtype=np.float32), tuple(image_size))


def _steps(transforms) -> List[T.Transform]:
    return list(getattr(transforms, "transforms", [transforms]))


def _official_box(geometry: GTGeometry, transforms) -> np.ndarray:
    """The official inclusive box after ``transforms`` (float32 (4,))."""
    x, y, w, h = geometry.bbox
    one = np.float32(1)
    box = np.array(
        [x, y, x + max(w - one, 0), y + max(h - one, 0)], dtype=np.float32
    )  # bounding_box.py:80-87
    height, width = geometry.image_size
    box[0::2] = box[0::2].clip(0, width - 1)  # clip_to_image (:214-219), at the image's size
    box[1::2] = box[1::2].clip(0, height - 1)
    # not clipped again after the transforms: the official resize and flip do not clip
    for t in _steps(transforms):
        box = t.apply_box(box[None])[0].astype(np.float32)
        if isinstance(t, T.HFlipTransform):  # x -> W - x - 1 (bounding_box.py:144-147)
            box[0::2] -= 1
    return box


def official_keeps(geometry: GTGeometry) -> bool:
    """Whether the official loader keeps the annotation: its inclusive box, clipped at the
    image's size, spans more than one pixel each way (``clip_to_image(remove_empty=True)``,
    ``maskrcnn_benchmark/data/datasets/coco.py`` ``__getitem__``, ``bounding_box.py:214-223``)."""
    box = _official_box(geometry, T.TransformList([]))  # at the image's own size
    return bool(box[2] > box[0] and box[3] > box[1])


def _official_polygons(geometry: GTGeometry, transforms) -> List[np.ndarray]:
    out = []
    for p in geometry.polygons:
        coords = p.reshape(-1, 2).copy()
        for t in _steps(transforms):
            coords = t.apply_coords(coords).astype(np.float32)
            if isinstance(t, T.HFlipTransform):  # segmentation_mask.py:258-268
                coords[:, 0] -= 1
        out.append(coords.reshape(-1))
    return out


def move_geometry(
    geometry: GTGeometry, transforms, image_size: Tuple[int, int], legacy: bool
) -> Tuple[List[np.ndarray], np.ndarray]:
    """An annotation's polygons and its box (XYXY, exclusive corners) on the sample.

    Args:
        geometry: the annotation's.
        transforms: the sample's detectron2 transforms.
        image_size: (H, W) of the sample after the transforms, before padding.
        legacy (bool): maskrcnn_benchmark's conventions (the module doc).
    """
    if legacy:
        box = _official_box(geometry, transforms)
        return _official_polygons(geometry, transforms), box + np.float32([0, 0, 1, 1])
    polygons = [
        np.asarray(p, dtype=np.float64).reshape(-1)
        for p in transforms.apply_polygons([p.reshape(-1, 2) for p in geometry.polygons])
    ]
    xyxy = BoxMode.convert(
        geometry.bbox[None].astype(np.float64), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS
    )
    # clipped to the sample as detectron2's transform_instance_annotations clips
    box = transforms.apply_box(xyxy)[0].clip(min=0)
    return polygons, np.minimum(box, list(image_size + image_size)[::-1])


def add_gt_polygons(
    instances: Instances,
    geometry: Sequence[GTGeometry],
    rows: Sequence[int],
    transforms,
    image_size: Tuple[int, int],
    legacy: bool,
) -> None:
    """Set ``instances.gt_polygons`` and the ground-truth rows' ``gt_boxes``.

    Args:
        instances: a sample's targets; row ``r`` is target ``rows[r]`` of the mapper, the
            ground truth being targets ``0 .. len(geometry) - 1`` (the rest pseudo rows).
        geometry: each ground-truth target's :class:`GTGeometry`.
        rows: the mapper's target index of each row.
        transforms, image_size, legacy: as :func:`move_geometry`.

    The pseudo rows keep their ``gt_boxes``.
    """
    has = instances.has("gt_boxes")
    out = instances.gt_boxes.tensor.clone().float() if has else torch.zeros((len(rows), 4))
    polygons = []
    for r, i in enumerate(rows):
        if i >= len(geometry):
            polygons.append([])
            continue
        moved, box = move_geometry(geometry[i], transforms, tuple(image_size), legacy)
        polygons.append(moved)
        out[r] = torch.as_tensor(box, dtype=torch.float32)
    instances.gt_boxes = Boxes(out)
    instances.gt_polygons = PolygonMasks(polygons)


def drop_empty_boxes(
    instances: Instances,
    geometry: Optional[Sequence[GTGeometry]],
    rows: Sequence[int],
    legacy: bool,
) -> Instances:
    """``instances`` less the rows whose box has no area, which give the RPN an infinite box
    loss: detectron2's ``filter_empty_instances`` (by box) and, under ``legacy``, the official
    loader's ``clip_to_image(remove_empty=True)`` of the ground truth (:func:`official_keeps`).

    Args:
        instances: a sample's targets with ``gt_boxes``; row ``r`` is target ``rows[r]``.
        geometry: the ground-truth targets' :class:`GTGeometry` (targets ``0 ..
            len(geometry) - 1``), or None.
        legacy (bool): MODEL.XPM.LEGACY_BOXES.
    """
    keep = instances.gt_boxes.nonempty()
    if geometry is not None and legacy:
        official = [i >= len(geometry) or official_keeps(geometry[i]) for i in rows]
        keep &= torch.tensor(official, dtype=torch.bool)
    return instances if bool(keep.all()) else instances[keep]
