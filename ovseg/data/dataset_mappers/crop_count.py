"""Which classes the training crop's category-area rule counts (``INPUT.CROP.CATEGORY_COUNT``).

The rule (detectron2's ``single_category_max_area``, mmseg's ``cat_max_ratio``) accepts a
window when at least two classes are present and none covers the maximum share of the
counted pixels. ovseg counts the training labels ("training": after the zero-shot remap, so
unseen pixels are ignore in the inductive setting). The official mmseg pipelines count the
labels their ``LoadAnnotations`` gives, before any remap in the model:

- "dataset": the dataset's own classes, unseen ones included (ZegCLIP: the inductive remap
  is in the model, ``models/segmentor/zegclip.py:142``, after ``RandomCrop``);
- "unseen_as_one": the dataset's classes with every unseen class counted as one class
  (MaskCLIP+: ``LoadAnnotations(suppress_labels=...)`` sets them all to -1,
  ``mmseg/datasets/pipelines/loading.py:154-156``, before ``RandomCrop`` counts with
  ``np.unique``, ``mmseg/datasets/pipelines/transforms.py:606-614``);
- "classes_as_one": every class counted as one (annotation-free MaskCLIP+ suppresses every
  class): no window ever holds two classes, so the crop keeps its last, random, window.

The crop then decides its window on this "counting" label map (moved with the sample by the
same transforms), while the transforms still apply to the training labels.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from detectron2.data import transforms as T

from ...vocab import Vocabulary
from .fast_crop import CategoryAreaCrop

__all__ = [
    "CATEGORY_COUNTS",
    "CountedCategoryAreaCrop",
    "CropCountInput",
    "crop_count_table",
]

# INPUT.CROP.CATEGORY_COUNT values
CATEGORY_COUNTS = ("training", "dataset", "unseen_as_one", "classes_as_one")


def crop_count_table(
    mode: str,
    class_names: Sequence[str],
    *,
    unseen: Optional[Sequence[str]] = (),
    label_map: Optional[np.ndarray] = None,
    ignore_label: int = 255,
    constrained: bool = True,
    dataset_name: str = "",
) -> Optional[np.ndarray]:
    """The lookup table from a dataset's label ids to the labels the crop counts.

    Args:
        mode (str): one of :data:`CATEGORY_COUNTS` (see the module docstring).
        class_names: the dataset's classes (``stuff_classes``), in label-id order.
        unseen: the dataset's unseen classes (``unseen_classes``); None when it has none.
        label_map (np.ndarray, optional): the mapper's zero-shot table (None: the training
            labels are the dataset's).
        ignore_label (int): the label of ignored pixels (never counted).
        constrained (bool): whether the crop counts at all (enabled, maximum area < 1).
        dataset_name (str): for error messages.

    Returns:
        np.ndarray or None: a table of at least 256 entries (``table[label]`` is the counted
        label; uint8 where the ids allow), or None when the crop counts the training labels
        (mode "training", no constrained crop, or counts that equal the training labels).
    """
    if mode not in CATEGORY_COUNTS:
        raise ValueError(
            f"Unknown INPUT.CROP.CATEGORY_COUNT {mode!r}; choose one of {list(CATEGORY_COUNTS)}"
        )
    if mode == "training" or not constrained:
        return None
    classes = Vocabulary(tuple(class_names), unseen=tuple(unseen or ()))
    merged = [i for i, n in enumerate(classes.names) if n in set(classes.unseen)]
    if mode == "unseen_as_one" and not merged:
        where = f"dataset {dataset_name!r}" if dataset_name else "the dataset"
        raise ValueError(
            f"INPUT.CROP.CATEGORY_COUNT 'unseen_as_one' counts the unseen classes as one, but "
            f"{where} has no unseen_classes; register them or use 'dataset' or 'training'"
        )
    if mode == "dataset" and label_map is None:
        return None  # the training labels are the dataset's: the same counts
    size = max(256, len(classes), ignore_label + 1)
    dtype = np.uint8 if size == 256 and ignore_label <= 255 else np.int64
    table = np.full(size, ignore_label, dtype=dtype)  # values that are no class: ignored
    table[: len(classes)] = np.arange(len(classes))
    if mode == "unseen_as_one":
        table[merged] = merged[0]  # one id no other class has, in the table's dtype
    elif mode == "classes_as_one":
        table[: len(classes)] = 0
    return table


class CropCountInput(T.AugInput):
    """``AugInput`` with a ``crop_counts`` label map, transformed as ``sem_seg`` is, on which
    :class:`CountedCategoryAreaCrop` decides its window."""

    def __init__(self, image: np.ndarray, *, sem_seg: np.ndarray, crop_counts: np.ndarray):
        """
        Args:
            image (np.ndarray): (H, W, C) image.
            sem_seg (np.ndarray): (H, W) training labels.
            crop_counts (np.ndarray): (H, W) the labels the crop counts (uint8, or float64
                for the transforms as ``label_for_transforms`` gives).
        """
        super().__init__(image, sem_seg=sem_seg)
        if crop_counts.shape != sem_seg.shape:
            raise ValueError(
                f"crop_counts has shape {crop_counts.shape}, sem_seg {sem_seg.shape}; "
                "they must be label maps of the same image"
            )
        self.crop_counts = crop_counts

    def transform(self, tfm: T.Transform) -> None:
        super().transform(tfm)
        self.crop_counts = tfm.apply_segmentation(self.crop_counts)


class CountedCategoryAreaCrop(CategoryAreaCrop):
    """:class:`CategoryAreaCrop` (same arguments and draws) deciding its window on the
    input's ``crop_counts`` (:class:`CropCountInput`) instead of its ``sem_seg``."""

    def get_transform(
        self, image: np.ndarray, sem_seg: np.ndarray, crop_counts: np.ndarray
    ) -> T.Transform:
        return super().get_transform(image, crop_counts)
