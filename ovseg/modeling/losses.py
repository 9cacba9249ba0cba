# mask_losses follows the official ZegCLIP criterion (ZiqinZhou66/ZegCLIP
# models/losses/criterion.py: sigmoid focal + dice), re-written.
"""Losses shared by the students: per-pixel cross-entropy with an ignore label, and sigmoid
focal + dice losses of per-class masks."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cross_entropy_per_image",
    "cross_entropy_sum",
    "mask_losses",
    "per_image_mean",
    "sigmoid_focal_terms",
]


def cross_entropy_sum(logits: Tensor, target: Tensor, ignore_value: int) -> Tuple[Tensor, Tensor]:
    """Softmax cross-entropy summed over the labelled pixels, and their number.

    Dividing the sums of a batch's groups by the total count gives the mean over every
    labelled pixel of the batch (a batch without any gives 0, not NaN).

    Args:
        logits (Tensor): (B, K, H, W) class logits (computed in float32).
        target (Tensor): (B, H, W) long labels in [0, K) or ``ignore_value``.
        ignore_value (int): the label of pixels without a target.

    Returns:
        (Tensor, Tensor): the scalar sum and the number of labelled pixels (a long scalar
        on the device: reading it back would wait for the device).
    """
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_value, reduction="sum")
    return loss, (target != ignore_value).sum()


def cross_entropy_per_image(
    logits: Tensor, target: Tensor, ignore_value: int
) -> Tuple[Tensor, Tensor]:
    """:func:`cross_entropy_sum` of each image: (B,) sums and (B,) labelled-pixel counts."""
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_value, reduction="none")
    return loss.flatten(1).sum(dim=1), (target != ignore_value).flatten(1).sum(dim=1)


def per_image_mean(sums: Tensor, counts: Tensor) -> Tensor:
    """The mean over images of each image's mean: ``sums[i] / counts[i]`` averaged over the
    images with a labelled pixel (each image weighs the same, however many of its pixels are
    labelled); 0 (reaching every term) when none has.

    Args:
        sums (Tensor): (B,) per-image loss sums; counts (Tensor): (B,) their pixel counts.
    """
    labelled = counts > 0
    means = sums / counts.clamp(min=1)
    return (means * labelled).sum() / labelled.sum().clamp(min=1)


def sigmoid_focal_terms(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    *,
    prob: Optional[Tensor] = None,
) -> Tensor:
    """RetinaNet's sigmoid focal loss per element, unreduced: ``ce * (1 - p_t) ** gamma``,
    weighted ``alpha`` for positives and ``1 - alpha`` for negatives (no weighting when
    ``alpha < 0``). ``prob`` is ``logits.sigmoid()`` when the caller has it already."""
    prob = logits.sigmoid() if prob is None else prob
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def mask_losses(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_value: int = 255,
    classes: Optional[Tensor] = None,
    ignore_as_negative: bool = False,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Sigmoid focal and dice losses of per-class masks, as sums to normalise by mask count.

    For image b and class k, the target mask is ``target[b] == k``. Focal: per (b, k), the
    mean over image b's counted pixels of the focal loss, summed over (b, k). Dice: summed
    over the (b, k) whose mask is not empty, ``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)``
    with p the sigmoid over counted pixels. Counted pixels: those not ``ignore_value``, or
    every pixel with ``ignore_as_negative`` (ignored ones are then negatives of every class).

    Args:
        logits (Tensor): (B, K, H, W) mask logits.
        target (Tensor): (B, H, W) long labels in [0, K) or ``ignore_value``.
        ignore_value (int): the ignore label.
        classes (Tensor, optional): (K,) bool, the classes that get a loss; None = all.
        ignore_as_negative (bool): see above.
        alpha (float): focal weight of positives (1 - alpha for negatives).
        gamma (float): focal exponent.

    Returns:
        tuple: (focal sum, dice sum, number of non-empty masks), scalar tensors.
    """
    b, k = logits.shape[:2]
    if target.shape != (b, *logits.shape[2:]):
        raise ValueError(
            f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    logits = logits.float()
    valid = target != ignore_value
    counted = torch.ones_like(valid) if ignore_as_negative else valid
    labels = torch.where(valid, target, torch.zeros_like(target))
    pos = F.one_hot(labels, k).permute(0, 3, 1, 2).float() * valid[:, None]  # (B, K, H, W)
    weight = counted[:, None].float()

    prob = logits.sigmoid()
    focal = sigmoid_focal_terms(logits, pos, alpha, gamma, prob=prob)
    num_pixels = weight.flatten(1).sum(1).clamp(min=1)  # (B,)
    focal = (focal * weight).flatten(2).sum(2) / num_pixels[:, None]  # (B, K)

    prob = (prob * weight).flatten(2)
    pos = pos.flatten(2)
    dice = 1 - (2 * (prob * pos).sum(2) + 1) / (prob.sum(2) + pos.sum(2) + 1)
    present = pos.sum(2) > 0
    if classes is not None:
        classes = classes.to(device=logits.device, dtype=torch.bool)
        focal = focal * classes
        present = present & classes
    return focal.sum(), (dice * present).sum(), present.sum()
