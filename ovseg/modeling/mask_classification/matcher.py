# Follows MaskFormer's HungarianMatcher as FreeSeg @7707335 uses it
# (mask2former/modeling/matcher.py: focal + dice mask costs, no point sampling), re-written.
"""Bipartite matching of predicted queries to ground-truth masks."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HungarianMatcher", "batch_dice_cost", "batch_sigmoid_focal_cost"]


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Dice loss (+1 smoothing) of every prediction against every target (matcher.py:12-27).

    Args:
        inputs (Tensor): (N, P) mask logits.
        targets (Tensor): (M, P) binary masks.

    Returns:
        Tensor: (N, M).
    """
    inputs = inputs.sigmoid()
    numerator = 2 * inputs @ targets.t()
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_focal_cost(
    inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Mean per-pixel sigmoid focal loss of every prediction against every target
    (matcher.py:30-63).

    Args:
        inputs (Tensor): (N, P) mask logits.
        targets (Tensor): (M, P) binary masks.

    Returns:
        Tensor: (N, M).
    """
    prob = inputs.sigmoid()
    pos = (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(
        inputs, torch.ones_like(inputs), reduction="none"
    )
    neg = prob**gamma * F.binary_cross_entropy_with_logits(
        inputs, torch.zeros_like(inputs), reduction="none"
    )
    if alpha >= 0:
        pos, neg = pos * alpha, neg * (1 - alpha)
    return (pos @ targets.t() + neg @ (1 - targets).t()) / inputs.shape[1]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising
    ``cost_class * -p[target] + cost_mask * focal + cost_dice * dice``, the ground truth
    downsampled (nearest) to the prediction size, solved per image by
    ``scipy.optimize.linear_sum_assignment`` (matcher.py:92-151).

    Args:
        cost_class: weight of the class cost (1).
        cost_mask: weight of the focal cost (FreeSeg: MASK_WEIGHT 20).
        cost_dice: weight of the dice cost (FreeSeg: DICE_WEIGHT 5).
        focal_alpha, focal_gamma: the focal cost's parameters (0.25, 2).
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 20.0,
        cost_dice: float = 5.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all three costs are 0; give at least one weight")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    @torch.no_grad()
    def cost_matrix(
        self, logits: Tensor, masks: Tensor, labels: Tensor, gt_masks: Tensor
    ) -> Tensor:
        """The (Q, M) matching cost of one image.

        Args:
            logits (Tensor): (Q, K) class logits.
            masks (Tensor): (Q, h, w) mask logits.
            labels (Tensor): long (M,) target classes.
            gt_masks (Tensor): (M, H, W) target masks (any size: resized to (h, w)).
        """
        # in float32 even inside an autocast region (AMP training): autocast would run the
        # cost products (``@``) in its lower precision despite the ``.float()`` casts
        with torch.autocast(masks.device.type, enabled=False):
            prob = logits.float().softmax(-1)
            cost_class = -prob[:, labels]
            tgt = F.interpolate(gt_masks[:, None].float(), size=masks.shape[-2:], mode="nearest")
            tgt = tgt[:, 0].flatten(1)
            out = masks.float().flatten(1)
            cost_mask = batch_sigmoid_focal_cost(out, tgt, self.focal_alpha, self.focal_gamma)
            cost_dice = batch_dice_cost(out, tgt)
            return (
                self.cost_class * cost_class
                + self.cost_mask * cost_mask
                + self.cost_dice * cost_dice
            )

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]]
    ) -> List[Tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        Args:
            outputs (dict): ``pred_logits`` (B, Q, K) and ``pred_masks`` (B, Q, h, w).
            targets (list[dict]): per image ``labels`` long (M,) and ``masks`` (M, H, W).

        Returns:
            list[(Tensor, Tensor)]: per image (query indices, target indices), long, of
            length min(Q, M), query indices ascending.
        """
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]} images")
        costs = {
            b: self.cost_matrix(logits[b], masks[b], tgt["labels"], tgt["masks"])
            for b, tgt in enumerate(targets)
            if len(tgt["labels"])
        }
        # one copy to the host for the whole batch: each image's own .cpu() waited for the
        # device once per image and layer (320 waits per FreeSeg step at batch 32)
        flat = torch.cat([c.flatten() for c in costs.values()]).cpu() if costs else None
        # imported here, not with the module: scipy.optimize takes about 0.6 s to import, and
        # every process that imports ovseg (train_net.py --help, an LSeg run) paid it unused
        from scipy.optimize import linear_sum_assignment

        indices, start = [], 0
        for b in range(len(targets)):
            if b not in costs:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            shape = costs[b].shape
            cost = flat[start : start + shape.numel()].view(shape)
            start += shape.numel()
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
