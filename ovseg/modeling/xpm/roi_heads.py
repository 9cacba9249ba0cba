"""XPM's C4 RoI heads: shared res5 features for boxes and masks, text-embedding classes.

Follows the R-50-C4 Mask R-CNN of XPM (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423,
``maskrcnn_benchmark/config/defaults.py``), re-written on detectron2 pieces (ROIAlignV2
pooling through torchvision, ``Matcher``, ``subsample_labels``, ``Box2BoxTransform``,
``fast_rcnn_inference``): RoIs pooled 14x14 from res4 (``defaults.py:303, 327-329``), res5
on top, the box branch and the mask branch on the same res5 features
(``SHARE_BOX_FEATURE_EXTRACTOR``, ``defaults.py:333``), one foreground IoU 0.5
(``defaults.py:271-274``), 512 RoIs per image with up to all positive
(``configs/coco_cap_det/zeroshot_mask.yaml:35``), box weights (10, 10, 5, 5)
(``defaults.py:277``), score 0.05, NMS 0.5, 100 detections (``defaults.py:291-297``).
Classes and masks are agnostic of the vocabulary: the classifier scores against the text
embeddings it is given (:mod:`.heads`).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from fvcore.nn import smooth_l1_loss
from torch import Tensor, nn

from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Boxes, Instances, pairwise_iou

from .heads import (
    AgnosticMaskHead,
    EmbeddingBoxPredictor,
    embedding_logits,
    weighted_classification_loss,
)
from .legacy import (
    LegacyBox2BoxTransform,
    legacy_clip,
    legacy_detections,
    legacy_pairwise_iou,
)
from .legacy_masks import legacy_mask_targets
from .noise import noise_aware_mask_loss
from .roi_align import MATMUL_MAX_PIXELS, ROIAlignAuto

__all__ = ["XPMROIHeads"]

Scale = Union[float, Tensor]


def _roi_pooler(
    resolution: int, stride: int, pooler_type: str, max_pixels: int, legacy: bool
) -> ROIPooler:
    """detectron2's pooler on one feature map; RoIAlign through :class:`ROIAlignAuto` (same
    sampling, faster on small CPU maps), the legacy one (``aligned=False``) when ``legacy``."""
    pooler = ROIPooler(
        output_size=resolution, scales=(1.0 / stride,), sampling_ratio=0, pooler_type=pooler_type
    )
    if legacy or pooler_type in ("ROIAlign", "ROIAlignV2"):
        aligned = pooler_type == "ROIAlignV2" and not legacy
        align = ROIAlignAuto(resolution, 1.0 / stride, 0, aligned=aligned, max_pixels=max_pixels)
        pooler.level_poolers = nn.ModuleList([align])
    return pooler


class XPMROIHeads(nn.Module):
    """Box classification against text, class-agnostic boxes and masks, on res5 RoIs."""

    def __init__(
        self,
        *,
        in_feature: str,
        feature_stride: int,
        res5: nn.Module,
        res5_channels: int,
        embed_dim: int,
        pooler_resolution: int = 14,
        pooler_type: str = "ROIAlignV2",
        batch_size_per_image: int = 512,
        positive_fraction: float = 1.0,
        iou_threshold: float = 0.5,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        smooth_l1_beta: float = 1.0,
        background_weight: float = 0.2,
        mask_conv_dim: int = 256,
        mask_predictor_std: float = 0.0,
        noise_head: bool = False,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        roi_align_max_pixels: int = MATMUL_MAX_PIXELS,
        dot_product: bool = False,
        legacy_boxes: bool = False,
    ):
        """
        Args:
            in_feature (str): the backbone feature RoIs are pooled from (C4: "res4").
            feature_stride (int): its stride.
            res5 (nn.Module): the res5 stage run on every pooled RoI.
            res5_channels (int): its output channels.
            embed_dim (int): the text embeddings' width.
            pooler_resolution, pooler_type: RoI pooling (ROIAlignV2 is torchvision's).
            batch_size_per_image, positive_fraction, iou_threshold: RoI sampling.
            bbox_reg_weights: the box-delta weights.
            smooth_l1_beta (float): beta of the box loss (XPM: 1).
            background_weight (float): background weight of the classification CE.
            mask_conv_dim (int): deconvolution channels of the mask head.
            mask_predictor_std (float): its logit predictor's init (:class:`.heads.
                AgnosticMaskHead`'s ``predictor_std``).
            noise_head (bool): give the mask head the student's noise head.
            score_thresh, nms_thresh, detections_per_image: test-time detection.
            roi_align_max_pixels (int): RoIAlign runs as a matrix product on CPU feature
                maps of at most this many pixels (:mod:`.roi_align`; 0: torchvision's always).
            dot_product (bool): score classes by the official raw dot product (BERT class
                embeddings) instead of ``tau * cos`` (:func:`.heads.embedding_logits`).
            legacy_boxes (bool): maskrcnn_benchmark's conventions (:mod:`.legacy`): legacy
                RoIAlign (``aligned=False``, ``layers/roi_align.py``, whatever
                ``pooler_type``), +1 box coding, IoU and NMS, clipping to ``size - 1``, mask
                targets cut as the official ``project_masks_on_boxes`` (:mod:`.legacy_masks`).
        """
        super().__init__()
        self.in_feature = in_feature
        self.legacy_boxes = bool(legacy_boxes)
        self.pooler = _roi_pooler(
            pooler_resolution, feature_stride, pooler_type, roi_align_max_pixels, legacy_boxes
        )
        self.res5 = res5
        # res5 halves the pooled RoIs and the mask head's deconvolution doubles them back
        self.mask_resolution = int(pooler_resolution)
        self.box_predictor = EmbeddingBoxPredictor(res5_channels, embed_dim)
        self.mask_head = AgnosticMaskHead(
            res5_channels, mask_conv_dim, noise_head=noise_head, predictor_std=mask_predictor_std
        )
        self.matcher = Matcher([iou_threshold], [0, 1], allow_low_quality_matches=False)
        weights = tuple(bbox_reg_weights)
        self.box2box = (
            LegacyBox2BoxTransform(weights) if legacy_boxes else Box2BoxTransform(weights)
        )
        self.iou = legacy_pairwise_iou if legacy_boxes else pairwise_iou
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.background_weight = float(background_weight)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_image = int(detections_per_image)
        self.dot_product = bool(dot_product)

    # ------------------------------------------------------------------ features
    def roi_features(self, features: Dict[str, Tensor], boxes: List[Boxes]) -> Tensor:
        """(R, C, h, w) res5 features of the boxes of every image, concatenated."""
        return self.res5(self.pooler([features[self.in_feature]], boxes))

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def sample(
        self,
        proposals: List[Instances],
        targets: List[Instances],
        num_classes: int,
        append_gt: bool,
    ) -> List[Instances]:
        """The RoIs trained on: proposals matched to targets (IoU >= the threshold), sampled.

        Args:
            proposals: per image, ``proposal_boxes`` and ``objectness_logits``.
            targets: per image, ``gt_boxes``, ``gt_classes`` (in [0, num_classes)) and
                ``gt_masks``.
            num_classes (int): K; unmatched RoIs get class K (background).
            append_gt (bool): add the target boxes to the proposals first.

        Returns:
            list[Instances]: per image ``proposal_boxes``, ``gt_classes`` and, where the
            image has targets, each RoI's matched ``gt_boxes`` and ``gt_masks``.
        """
        if append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        out = []
        for props, gt in zip(proposals, targets):
            has_gt = len(gt) > 0
            matched, match_labels = self.matcher(self.iou(gt.gt_boxes, props.proposal_boxes))
            if has_gt:
                classes = gt.gt_classes[matched].clone()
                classes[match_labels == 0] = num_classes
            else:
                classes = torch.full_like(matched, num_classes)
            fg, bg = subsample_labels(
                classes, self.batch_size_per_image, self.positive_fraction, num_classes
            )
            keep = torch.cat([fg, bg])
            roi = Instances(props.image_size, proposal_boxes=props.proposal_boxes[keep])
            roi.gt_classes = classes[keep]
            if has_gt:
                roi.gt_boxes = gt.gt_boxes[matched[keep]]
                roi.gt_masks = gt.gt_masks[matched[keep]]
            out.append(roi)
        return out

    def losses(
        self,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        targets: List[Instances],
        text: Tensor,
        logit_scale: Scale,
        *,
        append_gt: bool = True,
        box_reg: bool = True,
        noisy_masks: bool = False,
        background: Optional[Tensor] = None,
    ) -> Tuple[Dict[str, Tensor], Optional[Tensor]]:
        """The box and mask losses of one pass over ``targets``.

        Args:
            features: backbone features of the images.
            proposals, targets: per image (see :meth:`sample`).
            text (Tensor): (K, D) embeddings of the classes ``gt_classes`` index.
            logit_scale: tau of the cosine logits.
            append_gt (bool): add the target boxes to the proposals.
            box_reg (bool): compute ``loss_box_reg``.
            noisy_masks (bool): the noise-aware mask loss (pseudo targets) instead of BCE.
            background (Tensor, optional): (1, D) text embedding scoring the background
                (None: logit 0); targets of class K train as background.

        Returns:
            (dict, Tensor or None): ``loss_cls``, ``loss_box_reg`` (when asked) and
            ``loss_mask``; with ``noisy_masks``, the (P, M, M) sigma of the positive RoIs.
        """
        rois = self.sample(proposals, targets, len(text), append_gt)
        x = self.roi_features(features, [r.proposal_boxes for r in rois])
        embeddings, deltas = self.box_predictor(x)
        logits = embedding_logits(embeddings, text, logit_scale, background, dot=self.dot_product)
        labels = cat([r.gt_classes for r in rois])
        losses = {"loss_cls": weighted_classification_loss(logits, labels, self.background_weight)}
        fg = labels < len(text)
        positives = [r[r.gt_classes < len(text)] for r in rois]
        if box_reg:
            losses["loss_box_reg"] = self._box_loss(deltas[fg], positives, max(len(labels), 1))
        mask_logits, sigma = self.mask_head(x[fg], with_sigma=noisy_masks)
        side = mask_logits.shape[-1]
        mask_targets = [
            self._mask_targets(r, side).to(mask_logits.dtype) for r in positives if len(r)
        ]
        if not mask_targets:
            losses["loss_mask"] = mask_logits.sum() * 0.0
            return losses, sigma
        mask_targets = torch.cat(mask_targets)
        if noisy_masks:
            losses["loss_mask"] = noise_aware_mask_loss(mask_logits, sigma, mask_targets)
        else:
            losses["loss_mask"] = F.binary_cross_entropy_with_logits(mask_logits, mask_targets)
        return losses, sigma

    def _mask_targets(self, rois: Instances, side: int) -> Tensor:
        """(R, side, side) targets of the RoIs' matched masks inside their boxes."""
        boxes = rois.proposal_boxes.tensor
        if self.legacy_boxes:  # official project_masks_on_boxes (mask_head/loss.py:11-42)
            return legacy_mask_targets(rois.gt_masks, boxes, side, rois.image_size)
        return rois.gt_masks.crop_and_resize(boxes, side)

    def _box_loss(self, deltas: Tensor, positives: List[Instances], num_rois: int) -> Tensor:
        if not any(len(r) for r in positives):
            return deltas.sum() * 0.0
        positives = [r for r in positives if len(r)]  # images without targets lack gt_boxes
        proposal = cat([r.proposal_boxes.tensor for r in positives])
        target = cat([r.gt_boxes.tensor for r in positives])
        gt_deltas = self.box2box.get_deltas(proposal, target)
        loss = smooth_l1_loss(deltas, gt_deltas, self.smooth_l1_beta, reduction="sum")
        return loss / num_rois

    # ------------------------------------------------------------------ inference
    def refine(
        self, features: Dict[str, Tensor], proposals: List[Instances]
    ) -> Tuple[List[Boxes], List[Tensor]]:
        """Every proposal's refined box (clipped to its image) and RoI embedding.

        Returns:
            (list[Boxes], list[Tensor]): per image (R, 4) boxes and (R, D) embeddings.
        """
        boxes = [p.proposal_boxes for p in proposals]
        embeddings, deltas = self.box_predictor(self.roi_features(features, boxes))
        refined = self.box2box.apply_deltas(deltas, cat([b.tensor for b in boxes]))
        sizes = [len(b) for b in boxes]
        out_boxes = []
        for b, p in zip(refined.split(sizes), proposals):
            if self.legacy_boxes:
                out_boxes.append(Boxes(legacy_clip(b, p.image_size)))
                continue
            b = Boxes(b)
            b.clip(p.image_size)
            out_boxes.append(b)
        return out_boxes, list(embeddings.split(sizes))

    def mask_probabilities(self, features: Dict[str, Tensor], boxes: List[Boxes]) -> List[Tensor]:
        """Per image, the (R, M, M) class-agnostic mask probabilities inside the boxes."""
        if sum(len(b) for b in boxes) == 0:
            side = self.mask_resolution
            ref = features[self.in_feature]
            return [ref.new_zeros((0, side, side)) for _ in boxes]
        logits, _ = self.mask_head(self.roi_features(features, boxes))
        return list(logits.sigmoid().split([len(b) for b in boxes]))

    def inference(
        self,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        text: Tensor,
        logit_scale: Scale,
    ) -> List[Instances]:
        """Detections over the K classes of ``text``, at the network input size.

        Returns:
            list[Instances]: per image ``pred_boxes``, ``scores``, ``pred_classes`` (in
            [0, K)) and ``pred_masks`` ((R, M, M) probabilities inside each box).
        """
        boxes, embeddings = self.refine(features, proposals)
        results = []
        for b, e, p in zip(boxes, embeddings, proposals):
            logits = embedding_logits(e, text, logit_scale, dot=self.dot_product)
            scores = logits.softmax(dim=-1)
            if self.legacy_boxes:
                results.append(self._legacy_detections(b.tensor, scores, p.image_size))
                continue
            det, _ = fast_rcnn_inference_single_image(
                b.tensor,
                scores,
                p.image_size,
                self.score_thresh,
                self.nms_thresh,
                self.detections_per_image,
            )
            results.append(det)
        masks = self.mask_probabilities(features, [r.pred_boxes for r in results])
        for r, m in zip(results, masks):
            r.pred_masks = m
        return results

    def _legacy_detections(self, boxes: Tensor, scores: Tensor, size) -> Instances:
        return legacy_detections(
            boxes, scores, size, self.score_thresh, self.nms_thresh, self.detections_per_image
        )
