# Follows maskrcnn_benchmark's box conventions as the official XPM release runs them
# (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423), re-written.
"""maskrcnn_benchmark's +1-pixel box conventions, for MODEL.XPM.LEGACY_BOXES.

The official XPM checkpoints were trained and evaluated with maskrcnn_benchmark, whose boxes
have inclusive corners: a box ``(x1, y1, x2, y2)`` is ``x2 - x1 + 1`` pixels wide. Each
convention here names its official ``file:line`` (paths under ``maskrcnn_benchmark/``):

- anchors (:func:`official_cell_anchors`): ``modeling/rpn/anchor_generator.py:220-289``,
  a (stride x stride) window ``(0, 0, stride - 1, stride - 1)``, its sides rounded per aspect
  ratio, then scaled; centred at ``(stride - 1) / 2``, not 0;
- box coding (:class:`LegacyBox2BoxTransform`): ``modeling/box_coder.py:32-47, 64-93``,
  widths ``x2 - x1 + 1`` and the decoded ``x2``, ``y2`` less 1; an inclusive box is the
  exclusive box ``(x1, y1, x2 + 1, y2 + 1)``, so both are detectron2's exact coding of the
  boxes shifted by :func:`to_exclusive`, and the result shifted back;
- clipping (:func:`legacy_clip`): ``structures/bounding_box.py:214-219``, to ``width - 1``
  and ``height - 1``, keeping empty boxes (``remove_empty=False`` in
  ``modeling/rpn/inference.py:114`` and ``roi_heads/box_head/inference.py:96``);
- IoU and NMS (:func:`legacy_pairwise_iou`, :func:`legacy_batched_nms`): areas and
  intersections with +1 (``structures/boxlist_ops.py:83-88``, ``csrc/cuda/nms.cu:16-19``,
  ``csrc/cpu/nms_cpu.cpp:22, 56-57``), i.e. exact IoU of the shifted boxes; suppression at
  IoU ``> thresh`` as the CUDA kernel (``nms.cu:60``) and torchvision;
- detections (:func:`legacy_detections`): ``roi_heads/box_head/inference.py:121-163``,
  per-class NMS of the scores ``> thresh``, then the ``kthvalue`` cut that keeps ties;
- mask paste (:func:`paste_masks_legacy`): ``roi_heads/mask_head/inference.py:96-165``
  (``Masker(threshold=0.5, padding=1)``, ``data/datasets/evaluation/coco/coco_eval.py:112``):
  the M x M mask padded by one pixel, its box grown to match and cut to integers, resized
  bilinearly (``align_corners=False``) to the box's ``x2 - x1 + 1`` pixels and pasted; the
  mask is the probability ``> 0.5``.

In training, :mod:`.legacy_rpn` also matches anchors by the +1 IoU and normalises the RPN
losses as ``rpn/loss.py``, and :mod:`.legacy_masks` cuts the mask targets as
``mask_head/loss.py``'s ``project_masks_on_boxes``.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.layers import batched_nms
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances, pairwise_iou

__all__ = [
    "LegacyBox2BoxTransform",
    "legacy_batched_nms",
    "legacy_clip",
    "legacy_detections",
    "legacy_pairwise_iou",
    "official_cell_anchors",
    "paste_masks_legacy",
    "sizes_outermost",
    "to_exclusive",
    "to_inclusive",
]


def official_cell_anchors(stride: int, sizes, ratios) -> Tensor:
    """The (R * S, 4) cell anchors maskrcnn_benchmark makes (``anchor_generator.py:220-289``):
    a (stride x stride) window at the origin, its area kept while the aspect ratio changes
    (sides rounded), then scaled to each size; inclusive corners, aspect ratios outermost."""
    side = float(stride)
    center = (side - 1) / 2
    rows = []
    for ratio in ratios:
        w = round((side * side / ratio) ** 0.5)
        h = round(w * ratio)
        for size in sizes:
            ws, hs = w * size / side, h * size / side
            rows.append([center - (ws - 1) / 2, center - (hs - 1) / 2,
                         center + (ws - 1) / 2, center + (hs - 1) / 2])  # fmt: skip
    return torch.tensor(rows, dtype=torch.float32)


def sizes_outermost(anchors: Tensor, n_ratios: int, n_sizes: int) -> Tensor:
    """Official cell anchors (aspect ratios outermost) in detectron2's order (sizes
    outermost, ``DefaultAnchorGenerator.generate_cell_anchors``)."""
    order = [r * n_sizes + s for s in range(n_sizes) for r in range(n_ratios)]
    return anchors[torch.as_tensor(order, device=anchors.device)]


def to_exclusive(boxes: Tensor) -> Tensor:
    """Inclusive-corner boxes (..., 4) as exclusive ones: ``x2 + 1``, ``y2 + 1``."""
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def to_inclusive(boxes: Tensor) -> Tensor:
    """Exclusive-corner boxes (N, 4) as inclusive ones: ``x2 - 1``, ``y2 - 1``, no side
    below 0 (``(w - 1).clamp(min=0)``, ``bounding_box.py:80-87``)."""
    x2 = torch.maximum(boxes[:, 2] - 1, boxes[:, 0])
    y2 = torch.maximum(boxes[:, 3] - 1, boxes[:, 1])
    return torch.stack([boxes[:, 0], boxes[:, 1], x2, y2], dim=1)


class LegacyBox2BoxTransform:
    """maskrcnn_benchmark's ``BoxCoder`` (``box_coder.py:22-95``) with detectron2's
    ``Box2BoxTransform`` interface (``get_deltas``, ``apply_deltas``, ``weights``)."""

    def __init__(self, weights: Sequence[float], scale_clamp: float = math.log(1000.0 / 16)):
        # the official clamp of dw, dh: bbox_xform_clip (box_coder.py:13), detectron2's too
        self._exact = Box2BoxTransform(tuple(float(w) for w in weights), float(scale_clamp))
        self.weights = self._exact.weights
        self.scale_clamp = self._exact.scale_clamp

    def get_deltas(self, src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """(N, 4) deltas taking inclusive ``src_boxes`` to inclusive ``target_boxes``."""
        return self._exact.get_deltas(to_exclusive(src_boxes), to_exclusive(target_boxes))

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """(N, k * 4) inclusive boxes from deltas (N, k * 4) and inclusive ``boxes`` (N, 4)."""
        out = self._exact.apply_deltas(deltas, to_exclusive(boxes))
        shift = out.new_tensor([0.0, 0.0, 1.0, 1.0]).repeat(out.shape[1] // 4)
        return out - shift


def legacy_clip(boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """(N, 4) inclusive boxes clamped into an (h, w) image: x to [0, w - 1], y to
    [0, h - 1] (``bounding_box.py:214-219``); empty boxes are kept."""
    h, w = image_size
    x = boxes[:, 0::2].clamp(min=0, max=w - 1)
    y = boxes[:, 1::2].clamp(min=0, max=h - 1)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def legacy_pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> Tensor:
    """(N, M) IoU of inclusive boxes, areas ``(x2 - x1 + 1) (y2 - y1 + 1)``
    (``boxlist_ops.py:53-89``)."""
    return pairwise_iou(Boxes(to_exclusive(boxes1.tensor)), Boxes(to_exclusive(boxes2.tensor)))


def legacy_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, thresh: float) -> Tensor:
    """Indices kept by per-group NMS with maskrcnn_benchmark's +1 areas, by decreasing
    score: torchvision's NMS on the exclusive boxes, whose IoU is the +1 IoU."""
    return batched_nms(to_exclusive(boxes.float()), scores, idxs, thresh)


def legacy_detections(
    boxes: Tensor,
    scores: Tensor,
    image_size: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk: int,
) -> Instances:
    """One image's detections as the official ``PostProcessor.filter_results``
    (``box_head/inference.py:121-163``) makes them from class-agnostic boxes.

    Args:
        boxes (Tensor): (R, 4) decoded inclusive boxes, clipped (:func:`legacy_clip`).
        scores (Tensor): (R, K + 1) class probabilities, background last.
        image_size: (h, w).
        score_thresh, nms_thresh: a class's box is kept where its score ``> score_thresh``,
            then per-class NMS at ``nms_thresh``.
        topk (int): at most this many over all classes (<= 0: all), cut at the
            ``kthvalue`` score so ties with the last one stay (``:155-162``).

    Returns:
        Instances: ``pred_boxes``, ``scores``, ``pred_classes`` (in [0, K)), by decreasing
        score.
    """
    fg = scores[:, :-1]
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(fg).all(dim=1)
    keep = (fg > score_thresh) & finite[:, None]
    rows, classes = keep.nonzero(as_tuple=True)
    cand_boxes, cand_scores = boxes[rows], fg[rows, classes]
    kept = legacy_batched_nms(cand_boxes, cand_scores, classes, nms_thresh)
    n = len(kept)
    if n > topk > 0:
        cut, _ = torch.kthvalue(cand_scores[kept].cpu(), n - topk + 1)
        kept = kept[cand_scores[kept] >= cut.item()]
    out = Instances(image_size)
    out.pred_boxes = Boxes(cand_boxes[kept])
    out.scores = cand_scores[kept]
    out.pred_classes = classes[kept]
    return out


def _paste_one(mask: Tensor, box: Tensor, height: int, width: int) -> Tensor:
    """One (M, M) probability map pasted at an inclusive box (``inference.py:124-165``,
    ``thresh`` < 0: the probabilities themselves)."""
    m = mask.shape[-1]
    padded = F.pad(mask.float(), (1, 1, 1, 1))
    scale = (m + 2) / m
    half_w, half_h = (box[2] - box[0]) * 0.5 * scale, (box[3] - box[1]) * 0.5 * scale
    cx, cy = (box[2] + box[0]) * 0.5, (box[3] + box[1]) * 0.5
    x1, y1, x2, y2 = (
        int(v) for v in torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h]).int()
    )
    w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    resized = F.interpolate(padded[None, None], size=(h, w), mode="bilinear", align_corners=False)
    out = mask.new_zeros((height, width), dtype=torch.float32)
    x0, x_end = max(x1, 0), min(x2 + 1, width)
    y0, y_end = max(y1, 0), min(y2 + 1, height)
    if x_end > x0 and y_end > y0:
        out[y0:y_end, x0:x_end] = resized[0, 0, y0 - y1 : y_end - y1, x0 - x1 : x_end - x1]
    return out


def paste_masks_legacy(masks: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """(R, M, M) in-box probabilities -> (R, height, width) float, pasted as the official
    ``Masker(padding=1)``; threshold ``> 0.5`` for its binary masks.

    Args:
        masks (Tensor): (R, M, M) probabilities.
        boxes (Tensor): (R, 4) inclusive boxes at the output size.
    """
    if len(masks) == 0:
        return masks.new_zeros((0, height, width), dtype=torch.float32)
    return torch.stack([_paste_one(m, b, height, width) for m, b in zip(masks, boxes.float())])
