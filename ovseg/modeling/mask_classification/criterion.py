# Follows MaskFormer's SetCriterion as FreeSeg @7707335 uses it (mask2former/modeling/
# criterion.py: focal + dice on full-size masks, no point sampling; weights and auxiliary
# losses from mask2former/mask_former_model.py:93-121), re-written.
"""The set-prediction loss of mask classification: match, then CE on classes and focal +
dice on the matched masks, for the last prediction and the auxiliary ones."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.structures import Instances

from ..host_copy import tensor_to_device
from ..losses import sigmoid_focal_terms
from ..mask_count import MaskCount
from .matcher import HungarianMatcher

__all__ = ["MaskClassificationCriterion", "dice_loss", "prepare_targets", "sigmoid_focal_loss"]


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Dice loss with +1 smoothing, summed over masks / ``num_masks`` (criterion.py:15-30).

    Args:
        inputs (Tensor): (N, P) mask logits.
        targets (Tensor): (N, P) binary masks.
    """
    inputs = inputs.sigmoid()
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, num_masks: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """RetinaNet's focal loss, averaged over pixels, summed over masks / ``num_masks``
    (criterion.py:33-60).

    Args:
        inputs (Tensor): (N, P) mask logits.
        targets (Tensor): (N, P) binary masks.
    """
    return sigmoid_focal_terms(inputs, targets, alpha, gamma).mean(1).sum() / num_masks


def prepare_targets(
    targets: Sequence[Union[Instances, Dict[str, Tensor]]],
    padded_size: Optional[Tuple[int, int]] = None,
) -> List[Dict[str, Tensor]]:
    """Per-image ``{"labels", "masks"}`` with the masks zero-padded to one size.

    Args:
        targets: per image detectron2 ``Instances`` with ``gt_classes`` (long (M,)) and
            ``gt_masks`` (bool (M, H, W) or BitMasks), as ovseg's mask-target mappers give,
            or dicts with ``labels`` and ``masks``.
        padded_size: (H, W) to pad to (the batched image tensor's size); None: the largest
            mask size in the batch.

    Returns:
        list[dict]: ``labels`` long (M,), ``masks`` float (M, H_pad, W_pad).
    """
    items = []
    for t in targets:
        if isinstance(t, Instances):
            if not (t.has("gt_classes") and t.has("gt_masks")):
                raise ValueError(
                    f"target Instances need gt_classes and gt_masks; got fields "
                    f"{sorted(t.get_fields())}"
                )
            masks = getattr(t.gt_masks, "tensor", t.gt_masks)
            items.append((t.gt_classes.long(), masks))
        else:
            items.append((t["labels"].long(), t["masks"]))
    if padded_size is None:
        padded_size = (max(m.shape[-2] for _, m in items), max(m.shape[-1] for _, m in items))
    out = []
    for labels, masks in items:
        h, w = masks.shape[-2:]
        if h > padded_size[0] or w > padded_size[1]:
            raise ValueError(f"target masks of size {(h, w)} exceed the padded size {padded_size}")
        padded = masks.new_zeros((masks.shape[0], *padded_size), dtype=torch.float32)
        padded[:, :h, :w] = masks.float()
        out.append({"labels": labels, "masks": padded})
    return out


class MaskClassificationCriterion(nn.Module):
    """Hungarian-matched CE + focal + dice losses, already weighted.

    Args:
        matcher: the query-target matcher.
        class_weight: weight of the CE (1).
        mask_weight: weight of the focal loss (FreeSeg 20).
        dice_weight: weight of the dice loss (FreeSeg 5).
        no_object_weight: CE weight of the no-object class, the last logit (0.1).
        focal_alpha, focal_gamma: focal parameters (0.25, 2).
        deep_supervision: also supervise ``aux_outputs``.
        num_aux_losses: supervise only the first N auxiliary outputs; -1: all. FreeSeg builds
            10 layers and weights aux losses 0..8 only (mask_former_model.py:107-111 with
            open_transformer_predictor.py:75): the 10th is computed and dropped, so 9
            reproduces it; here the dropped output is not even matched.
    """

    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        class_weight: float = 1.0,
        mask_weight: float = 20.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        deep_supervision: bool = True,
        num_aux_losses: int = -1,
    ):
        super().__init__()
        self.matcher = matcher
        self.weight_dict = {
            "loss_ce": class_weight,
            "loss_mask": mask_weight,
            "loss_dice": dice_weight,
        }
        self.no_object_weight = no_object_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.deep_supervision = deep_supervision
        self.num_aux_losses = num_aux_losses
        # the CE is a mean of its own: an accumulating step fixes the count before its forwards
        self.mask_count = MaskCount(prefetch=True)

    @staticmethod
    def matched_on(device: torch.device, targets, indices) -> Tuple[Tensor, Tensor, Tensor]:
        """The matches of the whole batch on ``device`` in one copy: image, query and target
        indices (the target's index into the batch's targets, concatenated), (N,) each, in
        the images' order. A per-image copy of each index waited for the device each time."""
        starts = [0]
        for t in targets:
            starts.append(starts[-1] + len(t["labels"]))
        rows = [
            torch.stack([torch.full_like(src, b), src, tgt + starts[b]])
            for b, (src, tgt) in enumerate(indices)
        ]
        host = torch.cat(rows, 1) if rows else torch.zeros((3, 0), dtype=torch.int64)
        image, query, target = tensor_to_device(host, device).unbind(0)
        return image, query, target

    def loss_labels(self, logits: Tensor, labels: Tensor, matched) -> Tensor:
        """CE over K = C + 1 classes, unmatched queries labelled no-object (the last)
        (``labels``: the batch's target classes, concatenated)."""
        image, query, target = matched
        num_classes = logits.shape[-1] - 1
        target_classes = torch.full(
            logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[image, query] = labels[target]
        # no element written from a host number (a copy from the host on CUDA)
        weight = torch.cat([
            torch.ones(num_classes, device=logits.device, dtype=logits.dtype),
            torch.full((1,), self.no_object_weight, device=logits.device, dtype=logits.dtype),
        ])  # fmt: skip
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight)

    def loss_masks(
        self, masks: Tensor, gt_masks: Tensor, matched, num_masks: float
    ) -> Dict[str, Tensor]:
        """Focal and dice losses on matched masks, upsampled to the padded target size
        (``gt_masks``: the batch's target masks, concatenated)."""
        image, query, target = matched
        # float32 whatever the autocast dtype of the decoder's masks: under bf16 autocast
        # the upsampling, sigmoid and dice sums would otherwise all run in bf16
        src = masks[image, query].float()
        tgt = gt_masks[target].to(src)
        if src.shape[0] == 0:
            zero = masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        src = F.interpolate(src[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)
        src, tgt = src[:, 0].flatten(1), tgt.flatten(1)
        return {
            "loss_mask": sigmoid_focal_loss(
                src, tgt, num_masks, self.focal_alpha, self.focal_gamma
            ),
            "loss_dice": dice_loss(src, tgt, num_masks),
        }

    def _losses(
        self, outputs: Dict[str, Tensor], targets, batch: Tuple[Tensor, Tensor], num_masks: float
    ) -> Dict[str, Tensor]:
        """One prediction's weighted losses (``batch``: the targets' labels and masks,
        concatenated on the predictions' device)."""
        indices = self.matcher(outputs, targets)
        matched = self.matched_on(outputs["pred_masks"].device, targets, indices)
        losses = {"loss_ce": self.loss_labels(outputs["pred_logits"], batch[0], matched)}
        losses.update(self.loss_masks(outputs["pred_masks"], batch[1], matched, num_masks))
        return {k: v * self.weight_dict[k] for k, v in losses.items()}

    def forward(
        self,
        outputs: Dict,
        targets: Sequence[Union[Instances, Dict[str, Tensor]]],
        padded_size: Optional[Tuple[int, int]] = None,
    ) -> Dict[str, Tensor]:
        """The weighted losses.

        Args:
            outputs (dict): the decoder's ``pred_logits`` (B, Q, C + 1), ``pred_masks``
                (B, Q, h, w) and (with deep supervision) ``aux_outputs``.
            targets: per image ``Instances`` (gt_classes, gt_masks) or prepared dicts.
            padded_size: the batched image size the masks are padded to (None: the largest).

        Returns:
            dict[str, Tensor]: ``loss_ce``, ``loss_mask``, ``loss_dice`` and, per supervised
            auxiliary output i, ``loss_ce_{i}`` etc., each times its weight.
        """
        targets = prepare_targets(targets, padded_size)
        num_masks = sum(len(t["labels"]) for t in targets)
        # normalised by the mean number of masks over workers (criterion.py:200-206)
        # (and over an accumulated step's forwards: ovseg/modeling/mask_count.py)
        # on the host where it can be: a count made a device tensor and read back (.item())
        # is two waits for the device per step
        device = outputs["pred_masks"].device
        host = self.mask_count.host_normalizer(num_masks)
        if host is None:
            count = torch.as_tensor(float(num_masks), device=device)
            host = self.mask_count.normalizer(count).item()
        num_masks = host
        batch = (
            torch.cat([t["labels"] for t in targets]).to(device),
            torch.cat([t["masks"] for t in targets]).to(device),
        )
        losses = self._losses(outputs, targets, batch, num_masks)
        aux = outputs.get("aux_outputs", []) if self.deep_supervision else []
        if self.num_aux_losses >= 0:
            aux = aux[: self.num_aux_losses]
        for i, aux_out in enumerate(aux):
            losses.update(
                {f"{k}_{i}": v for k, v in self._losses(aux_out, targets, batch, num_masks).items()}
            )
        return losses
