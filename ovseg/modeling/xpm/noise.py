"""XPM's noise-aware mask loss for pseudo-labelled RoIs.

Follows XPM (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423), re-written:

- the noise head (``roi_heads/mask_head/roi_mask_predictors.py:26-39, 53-63``): a 1x1 conv
  on the DETACHED ReLU'd deconv features predicts ``s`` per pixel (weights N(0, 1e-3),
  bias 1); ``sigma = exp(s / 2)``;
- the loss (``roi_mask_predictors.py:41-51``, ``mask_head/loss.py:117-143``): for pseudo
  RoIs only, ``z = m + sigma * eps`` with one ``eps ~ N(0, 1)`` per pixel, loss = mean
  BCE-with-logits(z, pseudo mask); no regulariser on sigma, the mask pseudo loss x 1;
- the other pseudo losses x ``0.01 / mean(sigma)``, detached
  (``detector/st_generalized_rcnn.py:335-339``, the mean as ``mask_head/mask_head.py:80``);
- the noise head stops training at a given iteration (``st_generalized_rcnn.py:404-406``).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MaskNoiseHead",
    "freeze_noise_head_at",
    "noise_aware_mask_loss",
    "pseudo_loss_weight",
    "reweight_pseudo_losses",
]


class MaskNoiseHead(nn.Module):
    """Predicts the per-pixel noise scale sigma of a mask head's logits.

    Its input is detached, so the mask loss trains the noise head but never pushes the
    mask features through it. Once frozen (:meth:`freeze`, kept in ``state_dict`` so a
    resumed run stays frozen) its weights get no gradient; sigma is still predicted and
    the noise still sampled, as officially.
    """

    def __init__(self, in_channels: int, *, init_std: float = 1e-3, init_bias: float = 1.0):
        """
        Args:
            in_channels (int): channels of the ReLU'd deconv features.
            init_std (float): std of the normal weight init.
            init_bias (float): the bias init (s = 1 at the start, sigma = e^0.5).
        """
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1)
        nn.init.normal_(self.conv.weight, mean=0.0, std=init_std)
        nn.init.constant_(self.conv.bias, init_bias)
        self.register_buffer("frozen", torch.tensor(False))

    def freeze(self) -> None:
        """Stop training the noise head from now on."""
        self.frozen.fill_(True)
        self.conv.requires_grad_(False)

    @property
    def is_frozen(self) -> bool:
        """Whether the head has stopped learning (read on the host: no device sync)."""
        return not self.conv.weight.requires_grad

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # a frozen state from a checkpoint freezes the weights once, at load, so neither the
        # forward nor the per-iteration freeze check reads the flag from the device
        if prefix + "frozen" in state_dict:
            self.conv.requires_grad_(not bool(self.frozen))

    def forward(self, features: Tensor) -> Tensor:
        """
        Args:
            features (Tensor): (R, C, H, W) ReLU'd deconv features of the mask head.

        Returns:
            Tensor: sigma, (R, 1, H, W), positive.
        """
        s = self.conv(features.detach())
        return torch.exp(0.5 * s)


def freeze_noise_head_at(head: MaskNoiseHead, iteration: int, freeze_iter: int) -> bool:
    """Freeze ``head`` once ``iteration >= freeze_iter`` (a negative ``freeze_iter``
    never freezes); returns whether it is frozen. Call it every iteration."""
    if freeze_iter >= 0 and iteration >= freeze_iter and not head.is_frozen:
        head.freeze()
    return head.is_frozen


def noise_aware_mask_loss(
    mask_logits: Tensor, sigma: Tensor, targets: Tensor, eps: Optional[Tensor] = None
) -> Tensor:
    """Mean BCE-with-logits of the noisy logits ``m + sigma * eps`` against pseudo masks.

    Args:
        mask_logits (Tensor): (R, H, W) logits m of each pseudo RoI's class channel.
        sigma (Tensor): (R, H, W) or (R, 1, H, W) noise scale from :class:`MaskNoiseHead`.
        targets (Tensor): (R, H, W) pseudo masks in {0, 1}.
        eps (Tensor, optional): (R, H, W) standard normal noise; drawn when None.

    Returns:
        Tensor: the scalar loss (0, still in the graph, when there are no RoIs).
    """
    if sigma.dim() == 4:
        if sigma.shape[1] != 1:
            raise ValueError(f"sigma must have one channel, got shape {tuple(sigma.shape)}")
        sigma = sigma[:, 0]
    if not (mask_logits.shape == sigma.shape == targets.shape):
        raise ValueError(
            "mask_logits, sigma and targets must share the shape (R, H, W); got "
            f"{tuple(mask_logits.shape)}, {tuple(sigma.shape)}, {tuple(targets.shape)}"
        )
    if mask_logits.numel() == 0:
        return mask_logits.sum() * 0 + sigma.sum() * 0
    if eps is None:
        eps = torch.randn_like(mask_logits)
    elif eps.shape != mask_logits.shape:
        raise ValueError(f"eps shape {tuple(eps.shape)} != logits {tuple(mask_logits.shape)}")
    z = mask_logits + sigma * eps
    return F.binary_cross_entropy_with_logits(z, targets.to(z.dtype))


def pseudo_loss_weight(sigma: Tensor, scale: float = 0.01) -> Tensor:
    """``scale / mean(sigma)``, detached: the weight of the non-mask pseudo losses."""
    if sigma.numel() == 0:
        raise ValueError("sigma is empty: there is no pseudo RoI to weigh the losses by")
    return scale / sigma.detach().mean()


def reweight_pseudo_losses(
    losses: Dict[str, Tensor], sigma: Tensor, *, scale: float = 0.01
) -> Dict[str, Tensor]:
    """The pseudo losses with every loss but the mask loss (a key containing ``"mask"``)
    multiplied by :func:`pseudo_loss_weight`; the mask loss is kept at weight 1."""
    weight = pseudo_loss_weight(sigma, scale)
    return {k: v if "mask" in k else v * weight for k, v in losses.items()}
