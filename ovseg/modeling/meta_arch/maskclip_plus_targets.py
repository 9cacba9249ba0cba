"""MaskCLIP+'s training targets: the teacher's labels of a sample from each source, which
pixels are image content, and the feature distillation.

Pure functions used by :class:`~ovseg.modeling.meta_arch.maskclip_plus.MaskCLIPPlus`; every
label rule is :mod:`ovseg.pseudo.labels`' and every input comes from the data side:

- :func:`sample_teacher_labels`: one sample's teacher labels in training indices, from a
  store (its "pseudo_sem_seg"), from the teacher (:class:`TeacherLabelling`) on the
  original image (:func:`original_image_labels`) or on the augmented samples, a batch in one
  call (:func:`augmented_images_labels`);
- :func:`content_mask`: which pixels of a padded training sample are image content;
- :func:`l1_distillation`: the optional L1 pull of the student towards CLIP's embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.dataset_mappers import transform_label
from ...pseudo import (
    label_table,
    pixel_labels,
    score_kind_of,
    scores_to_labels,
    store_ignore_value,
)
from ...pseudo.store import GENERATE_HINT

__all__ = [
    "TeacherLabelling",
    "augmented_image_labels",
    "augmented_images_labels",
    "content_mask",
    "l1_distillation",
    "original_image_labels",
    "restandardized",
    "sample_teacher_labels",
]


@dataclass(frozen=True)
class TeacherLabelling:
    """How the teacher labels a training batch's pixels.

    Attributes:
        labeller (nn.Module): the teacher meta-architecture (eval mode), e.g. MaskCLIP.
        names (tuple[str, ...]): the training vocabulary.
        scored (tuple[int, ...]): indices of ``names`` the teacher scores (in this order: a
            store's vocabulary).
        threshold (float): the teacher's confidence threshold.
        ignore_value (int): the training ignore label.
        input_stats (tuple[Tensor, Tensor], optional): the (3, 1, 1) mean and std (0-255)
            with which the teacher should see an augmented crop instead of CLIP's own (the
            official code feeds CLIP the student's normalised input); None = CLIP's.
        classes (Tensor, optional): ``scored`` as a long tensor on the teacher's device
            (made once, not per image: a tensor from the host is a blocking copy); None =
            made from ``scored``.
    """

    labeller: nn.Module
    names: Tuple[str, ...]
    scored: Tuple[int, ...]
    threshold: float
    ignore_value: int
    input_stats: Optional[Tuple[Tensor, Tensor]] = None
    classes: Optional[Tensor] = None

    def scores(self, inputs: dict) -> Tensor:
        """The teacher's (K, H, W) scores of a model input over the scored classes."""
        return self.scores_of([inputs])[0]

    def scores_of(self, inputs: Sequence[dict]) -> List[Tensor]:
        """The teacher's (K, H, W) scores of model inputs over the scored classes, in one
        call of the labeller (inputs of one size share a forward)."""
        names = [self.names[i] for i in self.scored]
        with torch.no_grad():
            outputs = self.labeller([{**x, "vocabulary": names} for x in inputs])
        return [out["sem_seg"] for out in outputs]


def restandardized(image: Tensor, stats: Tuple[Tensor, Tensor], clip: nn.Module) -> Tensor:
    """``image`` recoloured so that CLIP's normalisation of it gives ``(image - mean) / std``.

    Args:
        image (Tensor): (3, H, W) RGB in [0, 255].
        stats (tuple[Tensor, Tensor]): the (3, 1, 1) mean and std to emulate (0-255).
        clip (nn.Module): the CLIP teacher (its ``pixel_mean`` / ``pixel_std``, 0-255).

    Returns:
        Tensor: (3, H, W) float, possibly outside [0, 255].
    """
    mean, std = (t.to(clip.pixel_mean.device).float() for t in stats)
    x = image.to(mean.device).float()
    return (x - mean) / std * clip.pixel_std + clip.pixel_mean


def augmented_image_labels(sample: dict, how: TeacherLabelling) -> Tensor:
    """The teacher's labels of a training sample's augmented image (the official recipe):
    :func:`augmented_images_labels` of the one sample."""
    return augmented_images_labels([sample], how)[0]


def augmented_images_labels(samples: Sequence[dict], how: TeacherLabelling) -> List[Tensor]:
    """The teacher's labels of training samples' augmented images, in one labeller call:
    images of one size share a forward (MaskCLIP's scores, denoising and smoothing are per
    image), where a call per sample ran the tower once per image.

    Args:
        samples (list[dict]): training samples with "image" (3, H, W).
        how (TeacherLabelling): the teacher and its classes (``input_stats``: how it sees
            the images).

    Returns:
        list[Tensor]: per sample, (H, W) long training indices or the ignore value.
    """
    inputs = []
    for sample in samples:
        image = sample["image"]
        if how.input_stats is not None:
            image = restandardized(image, how.input_stats, how.labeller.teacher)
        inputs.append({"image": image, "height": image.shape[-2], "width": image.shape[-1]})
    classes = how.classes if how.classes is not None else torch.as_tensor(how.scored)
    kind = score_kind_of(how.labeller)
    return [
        pixel_labels(
            scores, threshold=how.threshold, ignore_value=how.ignore_value, kind=kind,
            classes=classes,
        )[0]
        for scores in how.scores_of(inputs)
    ]  # fmt: skip


def original_image_labels(sample: dict, how: TeacherLabelling) -> Tensor:
    """The teacher's labels of a training sample exactly as a store holds them, online.

    What ``tools/generate_pseudo_labels.py`` writes for the sample's image (the labeller on
    the test-mode input of the original file at its original size,
    :func:`ovseg.pseudo.scores_to_labels`), then what the training mapper does to a stored
    label: translated into training indices, moved by ``sample["transforms"]``.

    Args:
        sample (dict): a training sample with "teacher_input" (the test-mode input of its
            original image, :class:`~ovseg.data.dataset_mappers.TeacherInputMapper`),
            "transforms" and "image".
        how (TeacherLabelling): the teacher and its classes.

    Returns:
        Tensor: (h, w) long training indices or the ignore value, h, w <= the sample's size.
    """
    where = repr(sample.get("file_name", ""))
    if "teacher_input" not in sample or "transforms" not in sample:
        raise ValueError(
            f"Training sample {where} has no 'teacher_input' and 'transforms', which "
            "PSEUDO_LABEL_SOURCE 'online' labels; build the training mapper with "
            "ovseg.data.build_dataset_mapper (it adds them for this source) or wrap it in "
            "ovseg.data.dataset_mappers.TeacherInputMapper"
        )
    store_names = [how.names[i] for i in how.scored]
    store_ignore = store_ignore_value(len(store_names))
    scores = how.scores(sample["teacher_input"])
    label, _ = scores_to_labels(scores, how.threshold, store_ignore, score_kind_of(how.labeller))
    table = label_table(
        store_names, how.names, source_ignore=store_ignore, target_ignore=how.ignore_value
    )
    out = transform_label(table[label], sample["transforms"])
    h, w = sample["image"].shape[-2:]
    if out.shape[0] > h or out.shape[1] > w:
        raise ValueError(
            f"{where}: the transformed label is {tuple(out.shape)} but the sample's image is "
            f"{(h, w)}; its 'transforms' or 'teacher_input' do not belong to it"
        )
    return out


def sample_teacher_labels(
    sample: dict, source: str, how: TeacherLabelling, command: str = GENERATE_HINT
) -> Tensor:
    """One training sample's teacher labels in training indices, from ``source``.

    Args:
        sample (dict): a training sample.
        source (str): "store" (its "pseudo_sem_seg", translated by the mapper),
            "online" (:func:`original_image_labels`) or "online_augmented"
            (:func:`augmented_image_labels`).
        how (TeacherLabelling): the teacher and its classes (online sources).
        command (str): how to make a store, for the error when "pseudo_sem_seg" is missing.

    Returns:
        Tensor: (h, w) long training indices or the ignore value, h, w <= the sample's size.
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
        return original_image_labels(sample, how)
    return augmented_image_labels(sample, how)


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
    image: Tensor,
    labels: Sequence[Optional[Tensor]] = (),
    ignore_value: int = 255,
    content_size: Optional[Tuple[int, int]] = None,
) -> Tensor:
    """Pixels of a (possibly padded) training sample that are image content.

    The mapper pads at the bottom and right and records the size before (``content_size``),
    whatever its pad value. Without it (an input not from ovseg's mappers) the trailing
    rows/columns that are black in every channel and ignored in every given label map are
    taken as padding. (A black, unlabelled last row of a real image counts as padding too,
    which only withholds a pseudo-label from it.)

    Args:
        image (Tensor): (3, H, W).
        labels: (H, W) label maps of the sample (None entries are skipped).
        ignore_value (int): their ignore label.
        content_size: (h, w) of the sample before its padding, when known.

    Returns:
        Tensor: (H, W) bool.
    """
    if content_size is not None:
        mask = torch.zeros(image.shape[-2:], dtype=torch.bool, device=image.device)
        mask[: content_size[0], : content_size[1]] = True
        return mask
    blank = (image == 0).all(dim=0)
    for label in labels:
        if label is not None:
            blank = blank & (label.to(blank.device) == ignore_value)
    h, w = blank.shape
    rows = blank.all(dim=1)
    cols = blank.all(dim=0)
    # length of the all-blank run at the end of each axis, kept on the device (reading it
    # back would make the host wait for the device, once per axis and image)
    last_h = h - torch.cumprod(rows.flip(0).int(), 0).sum()
    last_w = w - torch.cumprod(cols.flip(0).int(), 0).sum()
    inside_h = torch.arange(h, device=blank.device) < last_h
    inside_w = torch.arange(w, device=blank.device) < last_w
    return inside_h[:, None] & inside_w[None, :]
