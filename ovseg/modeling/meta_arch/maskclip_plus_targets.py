"""MaskCLIP+'s training targets: which pixels get pseudo-labels, and from whom.

Pure functions used by :class:`~ovseg.modeling.meta_arch.maskclip_plus.MaskCLIPPlus`:

- :func:`restricted_labels`: per-pixel class restricted to a candidate set, with a
  confidence threshold (the teacher's probabilities or the student's logits);
- :func:`store_label_table`: pseudo-label store indices -> training-vocabulary indices;
- :func:`original_image_labels`: the teacher's labels of one training sample computed
  exactly as ``tools/generate_pseudo_labels.py`` stores them, then moved onto the sample by
  its recorded transforms (the online path that equals the store);
- :func:`content_mask`: which pixels of a padded training sample are image content.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...pseudo import scores_to_labels

__all__ = [
    "augmented_image_labels",
    "content_mask",
    "l1_distillation",
    "original_image_labels",
    "record_transforms",
    "restricted_labels",
    "sample_teacher_labels",
    "store_ignore_value",
    "store_label_table",
    "to_training_labels",
]


def _norm(name: str) -> str:
    return name.strip().casefold()


def store_ignore_value(num_classes: int) -> int:
    """The ignore value of a pseudo-label store of ``num_classes`` names (as PseudoLabelStore)."""
    return 255 if num_classes <= 255 else 65535


def store_label_table(
    store_names: Sequence[str], names: Sequence[str], ignore_value: int
) -> Tensor:
    """Lookup table from store label values to indices of ``names`` (ignore -> ignore).

    Args:
        store_names: the store's vocabulary (its label value i is ``store_names[i]``).
        names: the training vocabulary.
        ignore_value (int): the training ignore label; also what the store's ignore value
            and padding map to.

    Returns:
        Tensor: int64 of ``max(store ignore, ignore_value) + 1`` entries.
    """
    index = {_norm(n): i for i, n in enumerate(names)}
    size = max(store_ignore_value(len(store_names)), int(ignore_value)) + 1
    table = torch.full((size,), int(ignore_value), dtype=torch.long)
    for i, name in enumerate(store_names):
        table[i] = index.get(_norm(name), int(ignore_value))
    return table


def to_training_labels(
    raw: Tensor, table: Tensor, size: Tuple[int, int], ignore_value: int, sample: dict
) -> Tensor:
    """Store-index labels of one sample -> (H, W) training indices, ignore-padded to ``size``.

    Args:
        raw (Tensor): (h, w) store indices / ignore values, h <= H, w <= W.
        table (Tensor): from :func:`store_label_table`.
        size ((int, int)): the padded batch size (H, W).
        ignore_value (int): the training ignore label.
        sample (dict): the sample (for error messages).

    Returns:
        Tensor: (H, W) long.
    """
    raw = raw.to(table.device).long()
    if raw.numel() and (int(raw.max()) >= table.numel() or int(raw.min()) < 0):
        raise ValueError(
            f"pseudo-labels of {sample.get('file_name', '')!r} hold values in "
            f"[{int(raw.min())}, {int(raw.max())}], beyond the store's classes and ignore value "
            f"({table.numel() - 1}); the store was made for another vocabulary"
        )
    out = torch.full(size, int(ignore_value), dtype=torch.long, device=table.device)
    out[: raw.shape[0], : raw.shape[1]] = table[raw]
    return out


def restricted_labels(
    scores: Tensor,
    candidates: Tensor,
    *,
    threshold: float,
    ignore_value: int,
    kind: str,
) -> Tensor:
    """Argmax over the candidate classes, ignore where not confident.

    Args:
        scores (Tensor): (B, C, H, W) scores over the C candidate classes only.
        candidates (Tensor): (C,) long, the training index of each candidate.
        threshold (float): confidence below which a pixel gets ``ignore_value``.
        ignore_value (int): the ignore label.
        kind (str): "logits" (confidence = softmax over the candidates) or "probabilities"
            (confidence = the largest score, clipped to [0, 1]).

    Returns:
        Tensor: (B, H, W) long training indices or ``ignore_value``.
    """
    if scores.shape[1] != candidates.numel():
        raise ValueError(
            f"scores have {scores.shape[1]} classes but {candidates.numel()} candidates"
        )
    scores = scores.detach().float()
    if kind == "logits":
        confidence, best = scores.softmax(dim=1).max(dim=1)
    elif kind == "probabilities":
        confidence, best = scores.max(dim=1)
        confidence = confidence.clamp(0.0, 1.0)
    else:
        raise ValueError(f"score kind {kind!r} is not 'logits' or 'probabilities'")
    labels = candidates.to(best.device)[best]
    return labels.masked_fill(confidence < threshold, int(ignore_value))


def l1_distillation(student: Tensor, clip: Tensor, masks: Tensor) -> Tensor:
    """Mean L1 distance of student and CLIP embeddings over the cells covering content.

    Args:
        student (Tensor): (B, D, h, w) the student's normalised embeddings.
        clip (Tensor): (B, D, h', w') CLIP's normalised dense embeddings (resized to h, w).
        masks (Tensor): (B, H, W) bool, image content (resized to h, w, nearest).

    Returns:
        Tensor: scalar; zero (connected to ``student``) when no cell is content.
    """
    h, w = student.shape[-2:]
    clip = F.interpolate(clip.to(student), size=(h, w), mode="bilinear", align_corners=False)
    masks = F.interpolate(masks[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0
    diff = (student.float() - clip.float()).abs().mean(dim=1)
    return diff[masks].mean() if bool(masks.any()) else diff.sum() * 0.0


def content_mask(
    image: Tensor, labels: Sequence[Optional[Tensor]] = (), ignore_value: int = 255
) -> Tensor:
    """Pixels of a (possibly padded) training sample that are image content.

    The mapper pads at the bottom and right with black pixels and ignore labels; the
    trailing rows/columns that are black in every channel and ignored in every given label
    map are taken as padding. (A black, unlabelled last row of a real image counts as
    padding too, which only withholds a pseudo-label from it.)

    Args:
        image (Tensor): (3, H, W).
        labels: (H, W) label maps of the sample (None entries are skipped).
        ignore_value (int): their ignore label.

    Returns:
        Tensor: (H, W) bool.
    """
    blank = (image == 0).all(dim=0)
    for label in labels:
        if label is not None:
            blank = blank & (label.to(blank.device) == ignore_value)
    h, w = blank.shape
    rows = blank.all(dim=1)
    cols = blank.all(dim=0)
    # length of the all-blank run at the end of each axis
    last_h = h - int(torch.cumprod(rows.flip(0).int(), 0).sum())
    last_w = w - int(torch.cumprod(cols.flip(0).int(), 0).sum())
    mask = torch.zeros(h, w, dtype=torch.bool, device=image.device)
    mask[:last_h, :last_w] = True
    return mask


def augmented_image_labels(
    sample: dict, *, labeller: nn.Module, names: Sequence[str], threshold: float
) -> Tensor:
    """The teacher's labels of a training sample's augmented image (the official recipe).

    Args:
        sample (dict): a training sample with "image" (3, H, W).
        labeller (nn.Module): the teacher meta-architecture (eval mode), e.g. MaskCLIP.
        names: the classes it scores (store order).
        threshold (float): its confidence threshold.

    Returns:
        Tensor: (H, W) long store indices or the store's ignore value.
    """
    h, w = sample["image"].shape[-2:]
    inputs = {"image": sample["image"], "height": h, "width": w, "vocabulary": list(names)}
    with torch.no_grad():
        scores = labeller([inputs])[0]["sem_seg"]
    candidates = torch.arange(len(names), device=scores.device)
    ignore = store_ignore_value(len(names))
    return restricted_labels(
        scores[None], candidates, threshold=threshold, ignore_value=ignore, kind="probabilities"
    )[0]


def original_image_labels(
    sample: dict,
    *,
    mapper: Callable[[dict], dict],
    labeller: nn.Module,
    names: Sequence[str],
    threshold: float,
    pad_value: int,
) -> Tensor:
    """The teacher's store labels of a training sample, computed online.

    Exactly what ``tools/generate_pseudo_labels.py`` writes for the sample's image (test
    mapping of the original file, the labeller's scores at the original size,
    :func:`ovseg.pseudo.scores_to_labels`), then what the training mapper does to a stored
    label: ``sample["transforms"]`` applied to it and padding to the sample's size.

    Args:
        sample (dict): a training sample with "file_name", "image" and "transforms" (the
            detectron2 TransformList the mapper applied).
        mapper: the test-mode dataset mapper the store was generated with.
        labeller (nn.Module): the teacher meta-architecture (eval mode), e.g. MaskCLIP.
        names: the store's vocabulary.
        threshold (float): the store's confidence threshold.
        pad_value (int): label of padded pixels (the dataset's ignore label).

    Returns:
        Tensor: (H, W) long labels in store indices, the store's ignore value, or
        ``pad_value`` on padding.
    """
    transforms = sample.get("transforms")
    if transforms is None:
        raise ValueError(
            f"Training sample {sample.get('file_name', '')!r} has no 'transforms', so the "
            "teacher's labels of the original image cannot be moved onto the augmented crop. "
            "Use a dataset mapper that records them (sample['transforms'] = the TransformList "
            "it applied), or MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE 'store' / 'online_augmented'"
        )
    inputs = mapper({"file_name": sample["file_name"]})
    inputs["vocabulary"] = list(names)
    with torch.no_grad():
        scores = labeller([inputs])[0]["sem_seg"]
    ignore = store_ignore_value(len(names))
    label, _ = scores_to_labels(scores, threshold, ignore, "probabilities")
    # the dtypes the training mapper hands to the transforms for uint8 / uint16 label PNGs
    label = label.astype(np.uint8) if ignore == 255 else label.astype(np.float64)
    label = transforms.apply_segmentation(label)
    out = torch.as_tensor(np.ascontiguousarray(label).astype(np.int64))
    h, w = sample["image"].shape[-2:]
    if out.shape[0] > h or out.shape[1] > w:
        raise ValueError(
            f"{sample.get('file_name', '')!r}: the transformed label is {tuple(out.shape)} but "
            f"the sample's image is {(h, w)}; 'transforms' does not belong to this sample"
        )
    return F.pad(out, (0, w - out.shape[1], 0, h - out.shape[0]), value=int(pad_value))


def sample_teacher_labels(
    sample: dict,
    source: str,
    *,
    labeller: nn.Module,
    names: Sequence[str],
    threshold: float,
    mapper: Optional[Callable[[dict], dict]],
    pad_value: int,
    command: str,
) -> Tensor:
    """One training sample's teacher labels in store indices, from ``source``.

    Args:
        sample (dict): a training sample.
        source (str): "store" (its "pseudo_sem_seg"), "online" (:func:`original_image_labels`)
            or "online_augmented" (:func:`augmented_image_labels`).
        labeller, names, threshold, mapper, pad_value: see those functions.
        command (str): how to make a store, for the error when "pseudo_sem_seg" is missing.

    Returns:
        Tensor: (h, w) long store indices / ignore values.
    """
    if source == "store":
        if "pseudo_sem_seg" not in sample:
            raise ValueError(
                f"Training sample {sample.get('file_name', '')!r} has no 'pseudo_sem_seg': set "
                f"DATASETS.PSEUDO_LABELS to a pseudo-label store, made with: {command} (or set "
                "MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE 'online')"
            )
        return sample["pseudo_sem_seg"]
    if source == "online":
        return original_image_labels(
            sample,
            mapper=mapper,
            labeller=labeller,
            names=names,
            threshold=threshold,
            pad_value=pad_value,
        )
    return augmented_image_labels(sample, labeller=labeller, names=names, threshold=threshold)


class _RecordingAugmentations:
    """Calls an AugmentationList and keeps the TransformList of the last call."""

    def __init__(self, augmentations: Callable):
        self.augmentations = augmentations
        self.last = None

    def __call__(self, aug_input):
        self.last = self.augmentations(aug_input)
        return self.last


def record_transforms(mapper) -> Callable[[dict], dict]:
    """Wrap a training mapper so every sample also carries "transforms" (its TransformList).

    For mappers whose ``augmentations`` attribute is the callable applying the
    augmentations (ovseg's SemanticDatasetMapper); PSEUDO_LABEL_SOURCE "online" needs it.

    Args:
        mapper: a dataset mapper (it is modified: its augmentations get recorded).

    Returns:
        callable: dataset dict -> sample with "transforms".
    """
    recorder = _RecordingAugmentations(mapper.augmentations)
    mapper.augmentations = recorder

    def call(dataset_dict: dict) -> dict:
        sample = mapper(dataset_dict)
        sample["transforms"] = recorder.last
        return sample

    return call
