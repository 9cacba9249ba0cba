# Follows the official FreeSeg region-classification test sets (mask2former/data/datasets/
# utils.py:10-42 load_binary_mask, registered as "<split>_classification" with
# evaluator_type "classification", register_coco_stuff.py:284-300), re-written.
"""Region-classification test sets: every class region of a split's images, one record each.

For a registered split ``<name>`` (semantic or panoptic), ``<name>_regions`` holds, per
image and per class present (the union of the class's non-crowd segments, or its pixels in
the label PNG), one region record (:func:`ovseg.data.region_sampling.image_regions`, task
``sem_seg``), in the split's order: deterministic, nothing sampled. Its metadata is the
split's (classes, seen/unseen split, ignore label) with ``evaluator_type``
``ovseg_region_classification``; the ``ovseg_region`` mapper crops each region and
FreeSeg's prompt stage classifies it.
"""

from __future__ import annotations

import functools
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..label_counts import load_label_counts
from ..region_sampling import image_regions
from .catalog import register_split

__all__ = ["REGION_SUFFIX", "register_region_eval_set"]

#: the suffix of a split's region-classification set
REGION_SUFFIX = "_regions"
_COPIED = (
    "stuff_classes",
    "stuff_colors",
    "ignore_label",
    "image_root",
    "sem_seg_root",
    "unseen_classes",
    "seen_classes",
    "vocabulary_name",
    "thing_classes",
    "stuff_dataset_id_to_contiguous_id",
)


def _load(base: str) -> List[dict]:
    meta = MetadataCatalog.get(base)
    classes = list(meta.stuff_classes)
    ignore = meta.get("ignore_label", 255)
    counts = load_label_counts(meta.get("sem_seg_root", None))  # None: the PNGs are read
    out = []
    for record in DatasetCatalog.get(base):
        out += image_regions(
            record, ("semantic",), classes, ignore_label=ignore, label_counts=counts
        )
    return out


def register_region_eval_set(name: str) -> str:
    """Register ``<name>_regions`` from the registered split ``name``; returns its name."""
    meta = MetadataCatalog.get(name)
    derived = name + REGION_SUFFIX
    copied = {k: meta.get(k) for k in _COPIED if meta.get(k, None) is not None}
    register_split(
        derived,
        functools.partial(_load, name),
        **copied,
        evaluator_type="ovseg_region_classification",
        eval_base_dataset=name,
    )
    return derived
