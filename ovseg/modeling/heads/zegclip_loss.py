# Follows the official ZegCLIP (ZiqinZhou66/ZegCLIP models/losses/criterion.py: focal + dice;
# decode_seg.py: calibration and self-training labels), re-written.
"""ZegCLIP's per-class mask losses and label rules: focal + dice, calibration, self-training."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TRANSDUCTIVE_PIXELS", "calibrate", "mask_losses", "transductive_targets"]

TRANSDUCTIVE_PIXELS = ("ignore", "unseen")


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
    ce = F.binary_cross_entropy_with_logits(logits, pos, reduction="none")
    p_t = prob * pos + (1 - prob) * (1 - pos)
    focal = ce * (1 - p_t) ** gamma * (alpha * pos + (1 - alpha) * (1 - pos))
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


def calibrate(scores: Tensor, seen: Tensor, amount: float) -> Tensor:
    """Lower the seen classes' scores: ``scores[:, k] - amount`` where ``seen[k]``.

    Args:
        scores (Tensor): (B, K, H, W) sigmoid probabilities.
        seen (Tensor): (K,) bool.
        amount (float): the calibration (paper: 0.1).

    Returns:
        Tensor: (B, K, H, W), a new tensor.
    """
    shift = amount * seen.to(device=scores.device, dtype=scores.dtype)
    return scores - shift.view(1, -1, 1, 1)


def transductive_targets(
    target: Tensor,
    logits: Tensor,
    unseen: Tensor,
    *,
    ignore_value: int = 255,
    pixels: str = "ignore",
) -> Tensor:
    """Self-training targets: pixels without ground truth get the best unseen class.

    Args:
        target (Tensor): (B, H, W) long labels, ``ignore_value`` where there is none.
        logits (Tensor): (B, K, H, W) the model's mask logits (or probabilities).
        unseen (Tensor): (K,) bool, the vocabulary's unseen classes.
        ignore_value (int): the ignore label.
        pixels (str): "ignore": label every ignored pixel; "unseen": relabel the pixels whose
            label is an unseen class (ignored pixels stay ignored).

    Returns:
        Tensor: (B, H, W) long targets, a new tensor.
    """
    if pixels not in TRANSDUCTIVE_PIXELS:
        raise ValueError(
            f"MODEL.ZEGCLIP.TRANSDUCTIVE_PIXELS={pixels!r} is not one of "
            f"{list(TRANSDUCTIVE_PIXELS)}"
        )
    unseen_idx = torch.nonzero(unseen.to(logits.device)).flatten()
    if unseen_idx.numel() == 0:
        raise ValueError(
            "transductive self-training needs unseen classes in the training vocabulary; "
            "check the dataset's unseen_classes and MODEL.OVSEG.ZERO_SHOT_SETTING"
        )
    best = unseen_idx[logits.detach()[:, unseen_idx].argmax(dim=1)]  # (B, H, W)
    if pixels == "ignore":
        where = target == ignore_value
    else:
        where = torch.isin(target, unseen_idx)
    return torch.where(where, best, target)
