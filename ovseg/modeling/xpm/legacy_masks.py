# Follows maskrcnn_benchmark's mask targets as the official XPM release trains on them
# (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423), re-written.
"""Mask-head targets as maskrcnn_benchmark makes them, for MODEL.XPM.LEGACY_BOXES.

``project_masks_on_boxes`` (``maskrcnn_benchmark/modeling/roi_heads/mask_head/loss.py:11-42``)
crops each positive RoI's matched mask to the RoI's inclusive box, resizes the crop to M x M
and rasterises it (``SegmentationMask.crop``, ``.resize((M, M))``, ``.get_mask_tensor()``;
``structures/segmentation_mask.py``). The box is cut the same way for both kinds of mask
(``:122-134`` binary, ``:278-290`` polygons): its left / top corner clamped into
``[0, size - 1]``, its right / bottom into ``[0, size]`` and kept at least 1 past the
left / top; the crop is ``x2 - x1`` wide (no +1 although the box is inclusive).

- Polygons (:class:`~detectron2.structures.PolygonMasks`; the official COCO ground truth,
  ``data/datasets/coco.py:122``): float corners, the polygons shifted by the clamped corner
  and scaled by ``M / w``, ``M / h`` (``:273-325``), rasterised at M x M by pycocotools
  (``:327-335``).
- Binary masks (:class:`~detectron2.structures.BitMasks` or a bool (N, H, W) tensor; the
  official pseudo masks are bool, ``modeling/detector/st_generalized_rcnn.py:268-271``):
  the corners rounded (``round``, half to even, ``:122``), the crop resized bilinearly
  (``align_corners=False``) and cast back to the mask's dtype (``type_as``, ``:151-156``):
  a bool mask is in wherever the interpolated value is non-zero.
"""

from __future__ import annotations

from typing import List, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.structures import BitMasks, PolygonMasks

__all__ = ["legacy_mask_targets", "official_crop_box"]

Masks = Union[BitMasks, PolygonMasks, Tensor]


def official_crop_box(box, width: int, height: int, rounded: bool) -> Tuple[float, ...]:
    """An inclusive box cut as ``SegmentationMask.crop`` cuts it (``segmentation_mask.py:
    122-134, 278-290``): ``(x1, y1, x2, y2)``, the crop ``x2 - x1`` by ``y2 - y1``. (The
    official code asserts ``x1 <= x2``; a reversed box, which +1 decoding can give, is cut
    to one pixel here.)"""
    x1, y1, x2, y2 = (float(v) for v in box)
    if rounded:  # binary masks round the corners first (python's round, half to even)
        x1, y1, x2, y2 = (float(round(v)) for v in (x1, y1, x2, y2))
    x1, y1 = min(max(x1, 0.0), width - 1.0), min(max(y1, 0.0), height - 1.0)
    x2, y2 = min(max(x2, 0.0), float(width)), min(max(y2, 0.0), float(height))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def _binary_target(mask: Tensor, box, side: int) -> Tensor:
    """One (H, W) mask cropped to ``box`` and resized to (side, side) in its own dtype."""
    height, width = mask.shape[-2:]
    x1, y1, x2, y2 = (int(v) for v in official_crop_box(box, width, height, rounded=True))
    crop = mask[y1:y2, x1:x2].float()
    resized = F.interpolate(
        crop[None, None], size=(side, side), mode="bilinear", align_corners=False
    )
    return resized[0, 0].to(mask.dtype)


def _polygon_target(polygons: List[np.ndarray], box, width: int, height: int, side: int):
    """One instance's polygons cropped to ``box``, scaled to (side, side), rasterised."""
    x1, y1, x2, y2 = official_crop_box(box, width, height, rounded=False)
    # float32 as the official tensors (PolygonInstance, segmentation_mask.py:225)
    sx, sy = float(side) / (x2 - x1), float(side) / (y2 - y1)
    scaled = []
    for p in polygons:
        q = torch.as_tensor(p, dtype=torch.float32).clone()
        if len(q) < 6:  # fewer than 3 points: dropped (:226)
            continue
        q[0::2] = (q[0::2] - x1) * sx
        q[1::2] = (q[1::2] - y1) * sy
        scaled.append(q.numpy().astype(np.float64))
    if not scaled:
        return torch.zeros(side, side, dtype=torch.uint8)
    rle = mask_util.merge(mask_util.frPyObjects(scaled, side, side))
    return torch.from_numpy(mask_util.decode(rle))


def legacy_mask_targets(
    masks: Masks, boxes: Tensor, side: int, image_size: Tuple[int, int]
) -> Tensor:
    """(R, side, side) float targets of R masks at their RoIs, as the official
    ``project_masks_on_boxes`` makes them (see the module doc).

    Args:
        masks: R masks at image size: ``BitMasks``, a bool (R, H, W) tensor or
            ``PolygonMasks``.
        boxes (Tensor): (R, 4) inclusive RoI boxes in image coordinates.
        side (int): M.
        image_size: (H, W) of the image the masks and boxes are in (a polygon's frame).
    """
    device = boxes.device
    boxes = boxes.detach().cpu()  # the official loop reads the boxes on the CPU (loss.py:32)
    if len(boxes) == 0:
        return torch.zeros((0, side, side), device=device)
    if isinstance(masks, PolygonMasks):
        height, width = image_size
        out = [_polygon_target(p, b, width, height, side) for p, b in zip(masks.polygons, boxes)]
    else:
        # cropped where the masks are (corners read on the CPU); bool targets match any device
        tensor = (masks.tensor if isinstance(masks, BitMasks) else masks).detach()
        out = [_binary_target(m, b, side) for m, b in zip(tensor, boxes)]
    return torch.stack(out).to(device=device, dtype=torch.float32)
