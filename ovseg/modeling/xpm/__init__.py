"""XPM's own pieces: the noise-aware mask loss, its detector's heads and the legacy
(maskrcnn_benchmark) parts. Caption nouns for pseudo-labels are data:
:mod:`ovseg.data.captions`."""

from .noise import (
    MaskNoiseHead,
    freeze_noise_head_at,
    noise_aware_mask_loss,
    pseudo_loss_weight,
    reweight_pseudo_losses,
)

__all__ = [
    "MaskNoiseHead",
    "freeze_noise_head_at",
    "noise_aware_mask_loss",
    "pseudo_loss_weight",
    "reweight_pseudo_losses",
]
