"""Teacher pseudo-labels: generation, the on-disk store, and attaching them to training data."""

from .attach import attach_pseudo_labels, pseudo_labelled_dataset_dicts
from .generate import (
    SCORE_KINDS,
    generate_pseudo_labels,
    score_kind_of,
    scores_to_labels,
    shard_dataset_dicts,
)
from .labeller import build_manifest, find_teacher, labeller_fingerprint, labeller_settings
from .store import PseudoLabelStore, image_id_of

__all__ = [
    "SCORE_KINDS",
    "PseudoLabelStore",
    "attach_pseudo_labels",
    "build_manifest",
    "find_teacher",
    "generate_pseudo_labels",
    "image_id_of",
    "labeller_fingerprint",
    "labeller_settings",
    "pseudo_labelled_dataset_dicts",
    "score_kind_of",
    "scores_to_labels",
    "shard_dataset_dicts",
]
