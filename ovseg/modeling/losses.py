# mask_losses follows the official ZegCLIP criterion (ZiqinZhou66/ZegCLIP
# models/losses/criterion.py: sigmoid focal + dice), re-written.
"""Losses shared by the students: per-pixel cross-entropy with an ignore label, and sigmoid
focal + dice losses of per-class masks."""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cross_entropy_per_image",
    "cross_entropy_sum",
    "MaskTargets",
    "mask_losses",
    "mask_targets",
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


class MaskTargets(NamedTuple):
    """The target side of :func:`mask_losses` for a batch's labels, the same for every
    decoder layer's logits (:func:`mask_targets`): built once, not once per layer."""

    #: (B, K, H, W) bool: the pixel is counted and of class k
    pos: Tensor
    #: (B, K, H, W) float: ``pos`` as the binary cross-entropy's target
    pos_float: Tensor
    #: (B, 1, H, W) float: 1 where the pixel is counted
    weight: Tensor
    #: (B,) counted pixels of each image, at least 1
    num_pixels: Tensor
    #: (B, K) pixels of each target mask
    pos_sum: Tensor


def mask_targets(
    target: Tensor,
    num_classes: int,
    *,
    ignore_value: int = 255,
    ignore_as_negative: bool = False,
    dtype: torch.dtype = torch.float32,
) -> MaskTargets:
    """The per-class target masks of ``target`` (B, H, W) and what :func:`mask_losses`
    derives from them (see there for ``ignore_value`` and ``ignore_as_negative``)."""
    valid = target != ignore_value
    counted = torch.ones_like(valid) if ignore_as_negative else valid
    classes = torch.arange(num_classes, device=target.device)
    # a bool comparison, not one_hot: no (B, H, W, K) int64 tensor, no permuted copy
    pos = (target[:, None] == classes[None, :, None, None]) & valid[:, None]
    pos_float = pos.to(dtype)
    weight = counted[:, None].to(dtype)
    num_pixels = weight.flatten(1).sum(1).clamp(min=1)
    return MaskTargets(pos, pos_float, weight, num_pixels, pos_float.flatten(2).sum(2))


def mask_losses(
    logits: Tensor,
    target: Union[Tensor, MaskTargets],
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
        target (Tensor or MaskTargets): (B, H, W) long labels in [0, K) or
            ``ignore_value``; or their :func:`mask_targets`, made once for the logits of
            several layers (``ignore_value`` and ``ignore_as_negative`` are then theirs).
        ignore_value (int): the ignore label.
        classes (Tensor, optional): (K,) bool, the classes that get a loss; None = all.
        ignore_as_negative (bool): see above.
        alpha (float): focal weight of positives (1 - alpha for negatives).
        gamma (float): focal exponent.

    Returns:
        tuple: (focal sum, dice sum, number of non-empty masks), scalar tensors.
    """
    b, k = logits.shape[:2]
    if not isinstance(target, MaskTargets):
        if target.shape != (b, *logits.shape[2:]):
            raise ValueError(
                f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
            )
        target = mask_targets(
            target, k, ignore_value=ignore_value, ignore_as_negative=ignore_as_negative
        )
    elif target.pos.shape != logits.shape:
        raise ValueError(
            f"mask targets {tuple(target.pos.shape)} do not match logits {tuple(logits.shape)}"
        )
    logits = logits.float()
    pos, weight = target.pos, target.weight

    # sigmoid_focal_terms for binary targets: the same values, with selections instead of
    # products by the 0/1 targets (fewer passes over the (B, K, H, W) tensors)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target.pos_float, reduction="none")
    p_t = torch.where(pos, prob, 1 - prob)
    focal = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        focal = focal * torch.where(pos, alpha, 1 - alpha)
    focal = (focal * weight).flatten(2).sum(2) / target.num_pixels[:, None]  # (B, K)

    prob = (prob * weight).flatten(2)
    inter = (prob * target.pos_float.flatten(2)).sum(2)
    dice = 1 - (2 * inter + 1) / (prob.sum(2) + target.pos_sum + 1)
    present = target.pos_sum > 0
    if classes is not None:
        classes = classes.to(device=logits.device, dtype=torch.bool)
        focal = focal * classes
        present = present & classes
    return focal.sum(), (dice * present).sum(), present.sum()
