"""From XPM's detections at the network input size to outputs at the image's own size, and
the gathering of its training targets."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.structures import BitMasks, Boxes, Instances

from ...vocab import normalize_name
from ..host_copy import instances_to_device

__all__ = [
    "class_subset",
    "paste_probabilities",
    "polygon_targets",
    "remap_classes",
    "semantic_from_instances",
    "to_output_size",
    "training_targets",
]


def class_subset(
    names: Sequence[str], keep: Optional[Sequence[str]], drop: Sequence[str]
) -> Tuple[Tuple[str, ...], Tensor]:
    """The names a classifier scores and the map from ``names`` into them.

    Args:
        names: a vocabulary.
        keep: only these names (None = all), compared normalised.
        drop: never these (stuff classes, which instance heads do not detect).

    Returns:
        (tuple[str, ...], Tensor): the kept names and a (len(names),) long table from an
        index of ``names`` to an index of the kept names, -1 where a name was left out.
    """
    keep_set = None if keep is None else {normalize_name(n) for n in keep}
    drop_set = {normalize_name(n) for n in drop}
    kept, table = [], []
    for name in names:
        key = normalize_name(name)
        if key in drop_set or (keep_set is not None and key not in keep_set):
            table.append(-1)
        else:
            table.append(len(kept))
            kept.append(name)
    return tuple(kept), torch.tensor(table, dtype=torch.long)


def training_targets(inp: dict, device: torch.device) -> Instances:
    """An input's ``instances`` as detection targets on ``device``.

    ``gt_classes`` (indices of the input's vocabulary) and ``gt_masks`` (bool (N, H, W)
    tensor, ``BitMasks`` or ``PolygonMasks``) are needed; ``gt_boxes`` default to the masks'
    boxes; a missing ``gt_is_pseudo`` means no instance is a pseudo-label; ``gt_polygons``
    is kept (:func:`polygon_targets`).
    """
    inst = inp.get("instances")
    if inst is None or not inst.has("gt_classes") or not inst.has("gt_masks"):
        raise ValueError(
            f"Training input {inp.get('file_name', '')!r} has no 'instances' with gt_classes "
            "and gt_masks; train XPM with an instance mapper (INPUT.DATASET_MAPPER_NAME "
            "'ovseg_instance' or 'ovseg_xpm_instance')"
        )
    masks = inst.gt_masks
    if isinstance(masks, Tensor):
        masks = BitMasks(masks.bool())
    out = Instances(inst.image_size)
    out.gt_masks = masks
    out.gt_boxes = inst.gt_boxes if inst.has("gt_boxes") else masks.get_bounding_boxes()
    out.gt_classes = inst.gt_classes.long()
    if inst.has("gt_is_pseudo"):
        out.gt_is_pseudo = inst.gt_is_pseudo.bool()
    else:
        out.gt_is_pseudo = torch.zeros(len(inst), dtype=torch.bool)
    if inst.has("gt_polygons"):  # MODEL.XPM.GT_POLYGONS (data/dataset_mappers/gt_polygons.py)
        out.gt_polygons = inst.gt_polygons
    return instances_to_device(out, device)


def polygon_targets(gt: Instances) -> Instances:
    """Ground-truth targets whose ``gt_masks`` are their ``gt_polygons`` where the mapper
    gave them (the official polygon targets, ``data/datasets/coco.py:120-123``)."""
    if not gt.has("gt_polygons"):
        return gt
    out = Instances(gt.image_size)
    for key, value in gt.get_fields().items():
        if key != "gt_polygons":
            out.set(key, value)
    out.gt_masks = gt.gt_polygons
    return out


def remap_classes(targets: Instances, table: Tensor, names: Sequence[str], what: str) -> Instances:
    """``targets`` with ``gt_classes`` mapped through ``table`` (from :func:`class_subset`);
    a class the table leaves out is an error naming it and ``what`` the targets are."""
    classes = targets.gt_classes
    if len(classes) and (classes.min() < 0 or classes.max() >= len(table)):
        raise ValueError(
            f"{what} classes {sorted(set(classes.tolist()))} are outside the "
            f"{len(table)}-name vocabulary; the mapper's vocabulary and instances disagree"
        )
    mapped = table.to(classes.device)[classes]
    if bool((mapped < 0).any()):
        bad = sorted({names[int(c)] for c in classes[mapped < 0]})
        raise ValueError(
            f"{what} of classes {bad} cannot be trained on: they are stuff classes or, for "
            "ground truth, unseen ones (ground-truth instances must be of the seen classes)"
        )
    out = Instances(targets.image_size)
    for key, value in targets.get_fields().items():
        out.set(key, value)
    out.gt_classes = mapped
    return out


def paste_probabilities(masks: Tensor, boxes: Boxes, height: int, width: int) -> Tensor:
    """(R, M, M) in-box probabilities -> (R, height, width) float, zero outside the boxes."""
    if len(masks) == 0:
        return masks.new_zeros((0, height, width))
    # a box clipped to nothing (zero width or height) would divide by zero in the paste
    box = boxes.tensor.clone()
    box[:, 2:] = torch.maximum(box[:, 2:], box[:, :2] + 1e-3)
    pasted, _ = _do_paste_mask(masks[:, None], box, height, width, skip_empty=False)
    return pasted


def to_output_size(det: Instances, height: int, width: int) -> Tuple[Boxes, float, float]:
    """The detections' boxes scaled from the network input size to (height, width)."""
    scale_x, scale_y = width / det.image_size[1], height / det.image_size[0]
    boxes = det.pred_boxes.clone()
    boxes.scale(scale_x, scale_y)
    boxes.clip((height, width))
    return boxes, scale_x, scale_y


def semantic_from_instances(
    probs: Tensor, scores: Tensor, classes: Tensor, num_classes: int
) -> Tensor:
    """(K, H, W): per class, the highest ``score * mask probability`` of its instances.

    Args:
        probs (Tensor): (R, H, W) pasted mask probabilities.
        scores (Tensor): (R,) detection scores.
        classes (Tensor): (R,) class indices in [0, K).
        num_classes (int): K.
    """
    h, w = probs.shape[-2:]
    out = probs.new_zeros((num_classes, h * w))
    if len(probs):
        values = (scores[:, None] * probs.flatten(1)).to(out.dtype)
        index = classes[:, None].expand(-1, h * w)
        out.scatter_reduce_(0, index, values, reduce="amax")
    return out.view(num_classes, h, w)
