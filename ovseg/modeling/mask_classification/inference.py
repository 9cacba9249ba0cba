# Follows Mask2Former's semantic/panoptic/instance inference (mask2former/maskformer_model.py:
# 280-380) and FreeSeg @7707335's variants (mask2former/open_vocabulary_model.py:413-655),
# re-written; FreeSeg's thresholds are arguments.
"""Per-image results from mask classification: (class probabilities, mask logits) ->
detectron2's ``sem_seg``, ``panoptic_seg`` and ``instances``.

Every function takes ``class_probs`` (Q, K): probabilities per query, either over C + 1
classes with no-object last (``has_no_object=True``, a softmax of the decoder's logits) or
over the C real classes only (``has_no_object=False``, e.g. FreeSeg's CLIP ensemble, which
drops no-object without renormalising), and ``mask_logits`` (Q, H, W) at the output size.
"""

from __future__ import annotations

from typing import Collection, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.structures import BitMasks, Instances

__all__ = [
    "freeseg_instance_inference",
    "instance_inference",
    "panoptic_inference",
    "resize_instances",
    "resize_panoptic",
    "semantic_inference",
]


def _real_class_probs(class_probs: Tensor, has_no_object: bool) -> Tensor:
    if class_probs.dim() != 2:
        raise ValueError(f"class_probs must be (Q, K), got {tuple(class_probs.shape)}")
    return class_probs[:, :-1] if has_no_object else class_probs


def semantic_inference(
    class_probs: Tensor, mask_logits: Tensor, has_no_object: bool = True
) -> Tensor:
    """Per-class scores: sum over queries of p(class) x sigmoid(mask) (maskformer_model.py:280).

    Returns:
        Tensor: (C, H, W) float32 (the sum over queries runs in float32 under autocast too).
    """
    probs = _real_class_probs(class_probs, has_no_object).float()
    with torch.autocast(mask_logits.device.type, enabled=False):
        return torch.einsum("qc,qhw->chw", probs, mask_logits.float().sigmoid())


def _segment_mask(
    k: int, masks: Tensor, labels: Tensor, owner: Tensor, by_class: bool
) -> Tuple[Tensor, int, int]:
    """Query k's kept pixels, its kept-area numerator and its own area (sigmoid >= 0.5)."""
    own = masks[k] >= 0.5
    # FreeSeg (open_vocabulary_model.py:521-523): pixels whose class argmax is k's class
    if by_class:
        mask = own & (owner == labels[k])
        return mask, int(mask.sum()), int(own.sum())
    # Mask2Former (maskformer_model.py:315-317): pixels whose score-weighted query argmax is k
    return own & (owner == k), int((owner == k).sum()), int(own.sum())


def panoptic_inference(
    class_probs: Tensor,
    mask_logits: Tensor,
    *,
    thing_ids: Collection[int],
    has_no_object: bool = True,
    temperature: Optional[float] = None,
    object_mask_threshold: float = 0.0,
    thing_score_threshold: float = 0.0,
    overlap_threshold: float = 0.8,
    pixel_assignment: str = "query",
    drop_label: Optional[int] = None,
) -> Tuple[Tensor, List[Dict]]:
    """Non-overlapping segments with stuff of one class merged.

    Args:
        class_probs (Tensor): (Q, K) probabilities (see the module docstring).
        mask_logits (Tensor): (Q, H, W).
        thing_ids: the class indices that are things.
        temperature: None: the scores are ``class_probs`` (Mask2Former); T: the scores are
            softmax(class_probs / T) (FreeSeg: 0.01, open_vocabulary_model.py:494).
        object_mask_threshold: drop queries scoring at most this (Mask2Former 0.8).
        thing_score_threshold: drop things scoring below this (FreeSeg 0.5, :528).
        overlap_threshold: drop a segment whose kept area / own area is below this
            (FreeSeg 0.5, Mask2Former 0.8).
        pixel_assignment: "query": a pixel belongs to the query maximising score x mask
            (Mask2Former); "class": to the queries of the class maximising the semantic
            map (FreeSeg :492, :522).
        drop_label: drop the queries whose class is this index (the FreeSeg release's
            ``labels.ne(num_classes)``, :495; None: none).

    Returns:
        (Tensor, list[dict]): int32 (H, W) segment ids (0 = none) and per segment
        ``{"id", "category_id", "isthing"}``.
    """
    if pixel_assignment not in ("query", "class"):
        raise ValueError(f"pixel_assignment={pixel_assignment!r}: use 'query' or 'class'")
    masks = mask_logits.sigmoid()
    real = _real_class_probs(class_probs, has_no_object)
    sharp = class_probs if temperature is None else (class_probs / temperature).softmax(-1)
    scores, labels = sharp.max(-1)
    keep = scores > object_mask_threshold
    if has_no_object:
        keep &= labels != class_probs.shape[-1] - 1
    if drop_label is not None:
        keep &= labels != drop_label
    scores, labels, masks = scores[keep], labels[keep], masks[keep]
    panoptic_seg = torch.zeros(mask_logits.shape[-2:], dtype=torch.int32, device=mask_logits.device)
    segments: List[Dict] = []
    if masks.shape[0] == 0:
        return panoptic_seg, segments
    if pixel_assignment == "class":
        owner = torch.einsum("qc,qhw->chw", real, mask_logits.sigmoid()).argmax(0)
    else:
        owner = (scores.view(-1, 1, 1) * masks).argmax(0)
    stuff_ids: Dict[int, int] = {}
    for k in range(labels.shape[0]):
        label = int(labels[k])
        isthing = label in thing_ids
        mask, area, own_area = _segment_mask(k, masks, labels, owner, pixel_assignment == "class")
        if area == 0 or own_area == 0 or not bool(mask.any()):
            continue
        if area / own_area < overlap_threshold or (isthing and scores[k] < thing_score_threshold):
            continue
        if not isthing and label in stuff_ids:
            panoptic_seg[mask] = stuff_ids[label]
            continue
        seg_id = len(segments) + 1
        if not isthing:
            stuff_ids[label] = seg_id
        panoptic_seg[mask] = seg_id
        segments.append({"id": seg_id, "isthing": bool(isthing), "category_id": label})
    # "class" assignment lets a later query of a class take an earlier one's pixels (as
    # FreeSeg's loop does); a segment left without pixels is not listed (panopticapi refuses
    # listed ids absent from the image)
    present = set(torch.unique(panoptic_seg).tolist())
    return panoptic_seg, [s for s in segments if s["id"] in present]


def _instances(mask_logits: Tensor, scores: Tensor, labels: Tensor) -> Instances:
    """Binary masks (logit > 0), their boxes, and score x mean mask probability inside."""
    result = Instances(tuple(mask_logits.shape[-2:]))
    binary = (mask_logits > 0).float()
    result.pred_masks = binary
    result.pred_boxes = BitMasks(binary > 0).get_bounding_boxes()
    inside = (mask_logits.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (
        binary.flatten(1).sum(1) + 1e-6
    )
    result.scores = scores * inside
    result.pred_classes = labels
    return result


def instance_inference(
    class_probs: Tensor,
    mask_logits: Tensor,
    *,
    topk: int = 100,
    has_no_object: bool = True,
    thing_ids: Optional[Collection[int]] = None,
) -> Instances:
    """Mask2Former's instances: the top-k (query, class) pairs (maskformer_model.py:344-380).

    Args:
        class_probs (Tensor): (Q, K); mask_logits (Tensor): (Q, H, W).
        topk: pairs kept (TEST.DETECTIONS_PER_IMAGE).
        thing_ids: when given, pairs of other classes are dropped (panoptic datasets).

    Returns:
        Instances: ``pred_masks`` (N, H, W) float 0/1, ``pred_boxes``, ``scores``,
        ``pred_classes``.
    """
    probs = _real_class_probs(class_probs, has_no_object)
    num_q, num_c = probs.shape
    scores, idx = probs.flatten().topk(min(topk, num_q * num_c), sorted=False)
    labels, queries = idx % num_c, idx // num_c
    if thing_ids is not None:
        keep = torch.tensor(
            [int(c) in thing_ids for c in labels], dtype=torch.bool, device=labels.device
        )
        scores, labels, queries = scores[keep], labels[keep], queries[keep]
    return _instances(mask_logits[queries], scores, labels)


def _suppress_groups(groups: Dict[int, List[int]], own: Tensor, keep: Tensor, ratio: float) -> None:
    """Per class, drop the largest mask when the others cover more than ``ratio`` of it
    (a mask spanning several instances; open_vocabulary_model.py:627-637)."""
    for members in groups.values():
        areas = [int(own[i].sum()) for i in members]
        largest = max(range(len(members)), key=lambda j: areas[j])
        union = torch.zeros_like(own[0])
        for j, i in enumerate(members):
            if j != largest:
                union |= own[i]
        if int(union.sum()) / areas[largest] > ratio:
            keep[members[largest]] = False


def freeseg_instance_inference(
    class_probs: Tensor,
    mask_logits: Tensor,
    *,
    has_no_object: bool = True,
    thing_ids: Optional[Collection[int]] = None,
    temperature: float = 0.01,
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.5,
    group_threshold: float = 0.8,
    official_defects: bool = False,
) -> Instances:
    """FreeSeg's instances (open_vocabulary_model.py:553-655): one class per query from
    softmax(p / T), kept when its score > ``score_threshold`` and more than
    ``overlap_threshold`` of its mask agrees with the semantic argmax; per class, a mask
    the others cover by more than ``group_threshold`` is dropped.

    ``official_defects=True`` reproduces the release: the last real class is never
    predicted (``[:, :-1]`` at :593 on probabilities that already lack no-object), every
    kept query is grouped under one stale class (``lab`` at :622), and the area tests
    threshold mask logits (not probabilities) at 0.5. By default each is done right.

    Returns:
        Instances: as :func:`instance_inference`.
    """
    probs = _real_class_probs(class_probs, has_no_object)
    owner = torch.einsum("qc,qhw->chw", probs, mask_logits.sigmoid()).argmax(0)
    sharp = (probs / temperature).softmax(-1)
    scores, labels = (sharp[:, :-1] if official_defects else sharp).max(-1)
    stale = int(labels[-1]) if labels.numel() else 0
    queries = torch.arange(labels.shape[0], device=labels.device)
    if thing_ids is not None:
        keep = torch.tensor(
            [int(c) in thing_ids for c in labels], dtype=torch.bool, device=labels.device
        )
        scores, labels, queries = scores[keep], labels[keep], queries[keep]
    own = mask_logits[queries] >= (0.5 if official_defects else 0.0)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    groups: Dict[int, List[int]] = {}
    for k in range(labels.shape[0]):
        area, own_area = int((own[k] & (owner == labels[k])).sum()), int(own[k].sum())
        if (
            area > 0
            and own_area > 0
            and scores[k] > score_threshold
            and area / own_area > overlap_threshold
        ):
            keep[k] = True
            groups.setdefault(stale if official_defects else int(labels[k]), []).append(k)
    _suppress_groups(groups, own, keep, group_threshold)
    return _instances(mask_logits[queries][keep], scores[keep], labels[keep])


def _nearest(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """(N, H, W) -> (N, *size) by nearest neighbour with pixel centres aligned, the rule of
    detectron2's ``ResizeTransform.apply_segmentation`` (PIL ``NEAREST``)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[0] == 0:
        return x.new_zeros((0, *size))
    return F.interpolate(x[None].float(), size=tuple(size), mode="nearest-exact")[0].to(x.dtype)


def resize_panoptic(
    panoptic_seg: Tensor, segments: List[Dict], size: Tuple[int, int]
) -> Tuple[Tensor, List[Dict]]:
    """A panoptic result resized to ``size`` by nearest neighbour; a segment left without
    pixels is dropped from the list (FreeSeg, open_vocabulary_model.py:398-407)."""
    seg = _nearest(panoptic_seg[None], size)[0]
    present = set(torch.unique(seg).tolist())
    return seg, [s for s in segments if s["id"] in present]


def resize_instances(instances: Instances, size: Tuple[int, int]) -> Instances:
    """Instances resized to ``size``: binary masks by nearest neighbour, boxes from them,
    scores and classes kept (FreeSeg, open_vocabulary_model.py:328-352)."""
    out = Instances(tuple(size))
    out.pred_masks = _nearest(instances.pred_masks, size)
    out.pred_boxes = BitMasks(out.pred_masks > 0).get_bounding_boxes()
    out.scores = instances.scores
    out.pred_classes = instances.pred_classes
    return out
