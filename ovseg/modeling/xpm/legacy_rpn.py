# Follows maskrcnn_benchmark's single-map RPN as the official XPM release runs it
# (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423, maskrcnn_benchmark/modeling/rpn/
# rpn.py:120-137, anchor_generator.py, inference.py:76-123), re-written on detectron2's RPN.
"""detectron2's RPN with maskrcnn_benchmark's anchors and +1 box conventions
(MODEL.XPM.LEGACY_BOXES): the official cell anchors (:func:`~.legacy.official_cell_anchors`,
in detectron2's order so converted RPN heads read them as trained), +1 box coding in decoding
and in the training targets (``BoxCoder(weights=(1, 1, 1, 1))``, ``rpn.py:127``), and the
official post-processing of proposals (``inference.py:94-121``): the top PRE_NMS_TOPK by
objectness, decoded, clipped to ``width - 1`` / ``height - 1`` without dropping empty boxes,
those narrower than MIN_SIZE (``x2 - x1 + 1``, ``boxlist_ops.py:34-48``) dropped, NMS with +1
areas, the first POST_NMS_TOPK kept.

Training (``rpn/loss.py``): anchors are matched to the inclusive ground-truth boxes by +1 IoU
(``:42-43``, ``structures/boxlist_ops.py:53-89``); the rest is detectron2's and the same as
the official: its :class:`~detectron2.modeling.matcher.Matcher` labels as the official
``Matcher(0.7, 0.3, allow_low_quality_matches=True)`` (``rpn/loss.py:140-145``,
``modeling/matcher.py:42-112``: IoU < 0.3 negative, [0.3, 0.7) ignored, >= 0.7 positive, and
each target's best anchors, ties included, positive, matched to their own best target), the
anchors crossing the border ignored as ``visibility`` (``anchor_generator.py:97-110``,
``rpn/loss.py:72-74``; MODEL.RPN.BOUNDARY_THRESH as STRADDLE_THRESH) and
``subsample_labels`` draws as ``BalancedPositiveNegativeSampler``
(``balanced_positive_negative_sampler.py:37-53``, the same ``randperm`` calls in the same
order). The regression targets are the +1 coding of the anchors; both losses are normalised
by the anchors sampled (``rpn/loss.py:104-129``: objectness BCE averaged over them, the box
loss's sum divided by their number), not by BATCH_SIZE_PER_IMAGE x images.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor

from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import BufferList, DefaultAnchorGenerator
from detectron2.modeling.proposal_generator import RPN
from detectron2.structures import Boxes, Instances

from .legacy import (
    LegacyBox2BoxTransform,
    legacy_batched_nms,
    legacy_clip,
    legacy_pairwise_iou,
    official_cell_anchors,
    sizes_outermost,
)

__all__ = ["LegacyRPN", "official_anchors"]


def official_anchors(cfg, stride: int) -> Tensor:
    """The official cell anchors of MODEL.ANCHOR_GENERATOR's one level, sizes outermost (the
    order of detectron2's anchors and of a converted RPN head's outputs)."""
    gen = cfg.MODEL.ANCHOR_GENERATOR
    if len(gen.SIZES) != 1 or len(gen.ASPECT_RATIOS) != 1 or gen.OFFSET != 0.0:
        raise ValueError(
            "MODEL.XPM.LEGACY_BOXES makes maskrcnn_benchmark's anchors for one feature map "
            f"(C4) at offset 0; MODEL.ANCHOR_GENERATOR has SIZES {gen.SIZES}, ASPECT_RATIOS "
            f"{gen.ASPECT_RATIOS}, OFFSET {gen.OFFSET} (set one level each and OFFSET 0.0)"
        )
    sizes, ratios = gen.SIZES[0], gen.ASPECT_RATIOS[0]
    anchors = official_cell_anchors(stride, sizes, ratios)
    return sizes_outermost(anchors, len(ratios), len(sizes))


class LegacyRPN(RPN):
    """detectron2's :class:`RPN` computing as maskrcnn_benchmark's (see the module doc)."""

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        if len(cfg.MODEL.RPN.IN_FEATURES) != 1:
            raise ValueError(
                "MODEL.XPM.LEGACY_BOXES follows the official C4 RPN on one feature map; "
                f"MODEL.RPN.IN_FEATURES is {cfg.MODEL.RPN.IN_FEATURES}"
            )
        (feature,) = cfg.MODEL.RPN.IN_FEATURES
        gen = ret["anchor_generator"]
        if not isinstance(gen, DefaultAnchorGenerator):
            raise ValueError(
                f"MODEL.XPM.LEGACY_BOXES needs MODEL.ANCHOR_GENERATOR.NAME "
                f"'DefaultAnchorGenerator', not {cfg.MODEL.ANCHOR_GENERATOR.NAME!r}"
            )
        gen.cell_anchors = BufferList([official_anchors(cfg, input_shape[feature].stride)])
        ret["box2box_transform"] = LegacyBox2BoxTransform(cfg.MODEL.RPN.BBOX_REG_WEIGHTS)
        return ret

    def predict_proposals(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """Per image, proposals as ``RPNPostProcessor.forward_for_single_feature_map``
        makes them: ``proposal_boxes`` (inclusive corners) and ``objectness_logits``, by
        decreasing objectness."""
        with torch.no_grad():
            (boxes,) = self._decode_proposals(anchors, pred_anchor_deltas)  # (N, HWA, 4)
            (logits,) = pred_objectness_logits  # (N, HWA)
            pre = min(logits.shape[1], self.pre_nms_topk[self.training])
            post = self.post_nms_topk[self.training]
            top, idx = logits.topk(pre, dim=1, sorted=True)
            results = []
            for n, size in enumerate(image_sizes):
                b = legacy_clip(boxes[n, idx[n]], size)
                s = top[n]
                wide = (b[:, 2] - b[:, 0] + 1 >= self.min_box_size) & (
                    b[:, 3] - b[:, 1] + 1 >= self.min_box_size
                )
                b, s = b[wide], s[wide]
                one = torch.zeros_like(s, dtype=torch.long)
                keep = legacy_batched_nms(b, s, one, self.nms_thresh)[:post]
                res = Instances(size)
                res.proposal_boxes = Boxes(b[keep])
                res.objectness_logits = s[keep]
                results.append(res)
            return results

    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Per image, the sampled anchor labels (1, 0, -1: ignored) and each anchor's matched
        target box: detectron2's steps with the +1 IoU (``rpn/loss.py:42-89``)."""
        anchors = Boxes.cat(anchors)
        labels, matched_boxes = [], []
        for gt in gt_instances:
            matched, label = self.anchor_matcher(legacy_pairwise_iou(gt.gt_boxes, anchors))
            label = label.to(gt.gt_boxes.device)
            if self.anchor_boundary_thresh >= 0:  # visibility (anchor_generator.py:97-110)
                label[~anchors.inside_box(gt.image_size, self.anchor_boundary_thresh)] = -1
            labels.append(self._subsample_labels(label))
            if len(gt) == 0:  # every anchor negative (the official code refuses such images)
                matched_boxes.append(torch.zeros_like(anchors.tensor))
            else:
                matched_boxes.append(gt.gt_boxes.tensor[matched])
        return labels, matched_boxes

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """detectron2's RPN losses normalised as the official ones, by the number of sampled
        anchors (``rpn/loss.py:120-129``) instead of BATCH_SIZE_PER_IMAGE x images."""
        losses = super().losses(
            anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes
        )
        sampled = int(sum((labels >= 0).sum() for labels in gt_labels))
        scale = self.batch_size_per_image * len(gt_labels) / max(sampled, 1)
        return {k: v * scale for k, v in losses.items()}
