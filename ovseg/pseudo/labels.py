"""Score -> label rules and label maps, once, for generating a store and for training on it.

- :func:`pixel_labels`: per-pixel class and confidence from a model's class scores, with a
  confidence threshold (tensors; optionally over a subset of classes);
- :func:`scores_to_labels`: the same for one (K, H, W) score map, as the numpy arrays a
  :class:`~ovseg.pseudo.PseudoLabelStore` writes;
- :func:`score_kind_of`: which rule a model's ``"sem_seg"`` needs (its ``sem_seg_scores``);
- :func:`store_ignore_value`: the ignore value of a store of K classes;
- :func:`label_table`: a lookup table from the label values of one vocabulary to the
  indices of another, by name (a store's labels -> a training vocabulary).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from torch import Tensor, nn

from ..vocab import normalize_name

__all__ = [
    "SCORE_KINDS",
    "label_table",
    "pixel_labels",
    "score_kind_of",
    "scores_to_labels",
    "store_ignore_value",
]

SCORE_KINDS = ("logits", "probabilities")


def pixel_labels(
    scores: Tensor,
    *,
    threshold: float,
    ignore_value: int,
    kind: str = "logits",
    classes: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Per-pixel class and confidence from class scores; ``ignore_value`` where unconfident.

    ``"logits"``: a softmax over the classes, on the scores as given (cosine-similarity
    heads already multiply by their logit scale), gives the class distribution; the
    confidence is its maximum. ``"probabilities"`` (e.g. MaskCLIP, whose key-smoothed
    scores are not renormalised): the largest score, clipped to [0, 1], is the confidence.
    Either way the label is the argmax of the scores (the first one on ties).

    Args:
        scores (Tensor): (..., C, H, W) class scores (classes on dim -3).
        threshold (float): pixels whose confidence is below this get ``ignore_value``.
        ignore_value (int): the label of unconfident pixels.
        kind (str): "logits" or "probabilities".
        classes (Tensor, optional): (C,) long, the label of each score channel (scores over
            a subset of a vocabulary); default: the channel index.

    Returns:
        tuple: (labels (..., H, W) int64, confidence (..., H, W) float32 in [0, 1]).
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"score kind {kind!r} is not one of {list(SCORE_KINDS)}")
    if classes is not None and scores.shape[-3] != classes.numel():
        raise ValueError(f"scores have {scores.shape[-3]} classes but {classes.numel()} labels")
    scores = scores.detach().float()
    if kind == "logits":
        confidence, best = scores.softmax(dim=-3).max(dim=-3)
    else:
        confidence, best = scores.max(dim=-3)
        confidence = confidence.clamp(0.0, 1.0)
    labels = best if classes is None else classes.to(best.device)[best]
    return labels.masked_fill(confidence < threshold, int(ignore_value)), confidence


def scores_to_labels(
    scores: Tensor, threshold: float, ignore_value: int = 255, kind: str = "logits"
) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`pixel_labels` of one (K, H, W) score map, as numpy arrays (a store's format).

    Args:
        scores (Tensor): (K, H, W) class scores.
        threshold (float): pixels whose confidence is below this get ``ignore_value``.
        ignore_value (int): the store's ignore label.
        kind (str): "logits" or "probabilities".

    Returns:
        tuple: (label (H, W) int64 with ``ignore_value`` where unconfident, confidence
        (H, W) float32 in [0, 1]).
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be (K, H, W), got shape {tuple(scores.shape)}")
    label, confidence = pixel_labels(
        scores, threshold=threshold, ignore_value=ignore_value, kind=kind
    )
    return label.cpu().numpy(), confidence.cpu().numpy()


def score_kind_of(model: nn.Module, kind: str = "auto") -> str:
    """What a model's "sem_seg" scores are: its ``sem_seg_scores`` attribute for "auto".

    Every ovseg meta-architecture declares ``sem_seg_scores``; other models' scores are
    taken as logits.
    """
    if kind == "auto":
        kind = getattr(model, "sem_seg_scores", "logits")
    if kind not in SCORE_KINDS:
        raise ValueError(
            f"score kind {kind!r} (of {type(model).__name__}) is not one of {list(SCORE_KINDS)}"
        )
    return kind


def store_ignore_value(num_classes: int) -> int:
    """The ignore value of a store over ``num_classes`` names: 255 for uint8 label PNGs
    (<= 255 classes), else 65535 (uint16)."""
    return 255 if num_classes <= 255 else 65535


def label_table(
    source: Sequence[str], target: Sequence[str], *, source_ignore: int, target_ignore: int
) -> np.ndarray:
    """A lookup table from label values over ``source`` names to indices of ``target``.

    Names are compared with :func:`~ovseg.vocab.normalize_name`; source classes missing
    from ``target`` and every value that is no source index (``source_ignore``) map to
    ``target_ignore``. The table is uint8 when every entry fits, so uint8 labels stay uint8
    (detectron2 resizes those with PIL, others with torch).

    Args:
        source: the names label value i refers to (e.g. a store's vocabulary).
        target: the names the output indexes (e.g. a training vocabulary).
        source_ignore (int): the largest value a source label holds (its ignore value).
        target_ignore (int): the output's ignore value.

    Returns:
        np.ndarray: uint8 or int64 table of ``max(source_ignore + 1, len(source))``
        entries; ``table[label]`` is the target label.
    """
    index = {normalize_name(n): i for i, n in enumerate(target)}
    values = [index.get(normalize_name(n), int(target_ignore)) for n in source]
    dtype = np.uint8 if max(values + [int(target_ignore)]) <= 255 else np.int64
    table = np.full(max(int(source_ignore) + 1, len(values)), target_ignore, dtype=dtype)
    table[: len(values)] = values
    return table
