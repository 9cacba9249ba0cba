"""XPM's own pieces: caption nouns for pseudo-labels and the noise-aware mask loss."""

from .noise import (
    MaskNoiseHead,
    freeze_noise_head_at,
    noise_aware_mask_loss,
    pseudo_loss_weight,
    reweight_pseudo_losses,
)
from .nouns import (
    COCO_LVIS_SYNONYMS,
    EXTRA_SYNONYMS,
    CaptionNounMatcher,
    CaptionNouns,
    lemmatize_phrase,
)

__all__ = [
    "COCO_LVIS_SYNONYMS",
    "EXTRA_SYNONYMS",
    "CaptionNounMatcher",
    "CaptionNouns",
    "MaskNoiseHead",
    "freeze_noise_head_at",
    "lemmatize_phrase",
    "noise_aware_mask_loss",
    "pseudo_loss_weight",
    "reweight_pseudo_losses",
]
