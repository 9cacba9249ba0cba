"""Shared registration of panoptic and instance benchmarks (Mask2Former's conventions).

A category is ``{"id": dataset id, "name": str, "isthing": 0 or 1}``. As in Mask2Former's
``register_coco_panoptic_annos_semseg.py`` and FreeSeg's ``register_coco_full.py``, every
class (thing or stuff) gets its index in the full category list as contiguous id:
``stuff_classes`` names them all, ``thing_dataset_id_to_contiguous_id`` and
``stuff_dataset_id_to_contiguous_id`` map dataset ids to that index, and ``thing_classes``
lists the things (for visualisation). ``seen_classes``/``unseen_classes`` split
``stuff_classes`` as the semantic benchmarks do. Nothing is read at registration.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Optional, Sequence

from ...utils.colors import deterministic_colors
from .common import DATASETS_README, datasets_root, register_split

__all__ = [
    "category_metadata",
    "load_panoptic_split",
    "load_instance_split",
    "register_panoptic_split",
    "register_instance_split",
]

logger = logging.getLogger(__name__)

# panoptic ids are category * LABEL_DIVISOR + instance in the students' outputs (Mask2Former)
LABEL_DIVISOR = 1000


def category_metadata(categories: Sequence[dict], unseen_ids: Sequence[int] = ()) -> dict:
    """The MetadataCatalog fields of a category list.

    Args:
        categories: ``{"id", "name", "isthing"}`` dicts in contiguous order.
        unseen_ids: dataset ids of the unseen classes (ids not in ``categories`` are skipped,
            so one list serves a dataset and its base variant).

    Returns:
        dict: stuff/thing classes, colours, id maps, seen/unseen classes.
    """
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"Duplicate category ids in {ids}")
    names = [c["name"] for c in categories]
    colors = deterministic_colors(len(categories))
    unseen = set(unseen_ids)
    return {
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_classes": [c["name"] for c in categories if c["isthing"]],
        "thing_colors": [colors[i] for i, c in enumerate(categories) if c["isthing"]],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
        "unseen_classes": [c["name"] for c in categories if c["id"] in unseen],
        "seen_classes": [c["name"] for c in categories if c["id"] not in unseen],
    }


def _missing(dataset_name: str, what: str, path: str, prepare_script: str):
    return FileNotFoundError(
        f"Dataset {dataset_name!r}: {what} {path} does not exist. Set DETECTRON2_DATASETS (now "
        f"{datasets_root()!r}) and prepare it as described in {DATASETS_README} "
        f"(python datasets/{prepare_script})."
    )


def _read_json(path: str, dataset_name: str, what: str, prepare_script: str) -> dict:
    if not os.path.isfile(path):
        raise _missing(dataset_name, what, path, prepare_script)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_panoptic_split(
    *,
    dataset_name: str,
    json_file: str,
    image_root: str,
    panoptic_root: str,
    sem_seg_root: Optional[str],
    categories: Sequence[dict],
    prepare_script: str,
    image_ext: str = ".jpg",
) -> list[dict]:
    """Dataset dicts of a panoptic split (detectron2's ``load_coco_panoptic_json`` format).

    Returns:
        list[dict]: ``file_name``, ``image_id``, ``pan_seg_file_name``, optional
        ``sem_seg_file_name``, and ``segments_info`` (``id``, contiguous ``category_id``,
        ``iscrowd``, ``isthing``, ``area``).
    """
    for what, path in (("image folder", image_root), ("panoptic PNG folder", panoptic_root)):
        if not os.path.isdir(path):
            raise _missing(dataset_name, what, path, prepare_script)
    data = _read_json(json_file, dataset_name, "panoptic json", prepare_script)
    contiguous = {c["id"]: i for i, c in enumerate(categories)}
    isthing = {c["id"]: bool(c["isthing"]) for c in categories}
    dicts = []
    for ann in data["annotations"]:
        stem = os.path.splitext(ann["file_name"])[0]
        segments = []
        for seg in ann["segments_info"]:
            cat = seg["category_id"]
            if cat not in contiguous:
                raise ValueError(
                    f"Dataset {dataset_name!r}: {json_file} gives segment {seg['id']} of "
                    f"{ann['file_name']} the category id {cat}, which is not one of its "
                    f"{len(categories)} classes; re-run python datasets/{prepare_script}"
                )
            segments.append({**seg, "category_id": contiguous[cat], "isthing": isthing[cat]})
        record = {
            "file_name": os.path.join(image_root, stem + image_ext),
            "image_id": ann["image_id"],
            "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
            "segments_info": segments,
        }
        if sem_seg_root:
            record["sem_seg_file_name"] = os.path.join(sem_seg_root, stem + ".png")
        dicts.append(record)
    if dicts and not os.path.isfile(dicts[0]["file_name"]):
        raise _missing(dataset_name, "image", dicts[0]["file_name"], prepare_script)
    logger.info("Loaded %d images of %s from %s", len(dicts), dataset_name, json_file)
    return dicts


def register_panoptic_split(
    name: str,
    *,
    categories: Sequence[dict],
    unseen_ids: Sequence[int],
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: Optional[str],
    instances_json: Optional[str],
    prepare_script: str,
    image_ext: str = ".jpg",
) -> None:
    """Register a panoptic split (evaluator ``ovseg_panoptic``: PQ, and mask AP and mIoU when
    ``instances_json`` / ``sem_seg_root`` are given)."""
    meta = category_metadata(categories, unseen_ids)
    extra = {"json_file": instances_json} if instances_json else {}
    if sem_seg_root:
        extra["sem_seg_root"] = sem_seg_root
    register_split(
        name,
        functools.partial(
            load_panoptic_split,
            dataset_name=name,
            json_file=panoptic_json,
            image_root=image_root,
            panoptic_root=panoptic_root,
            sem_seg_root=sem_seg_root,
            categories=tuple(categories),
            prepare_script=prepare_script,
            image_ext=image_ext,
        ),
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        evaluator_type="ovseg_panoptic",
        ignore_label=255,
        label_divisor=LABEL_DIVISOR,
        prepare_script=prepare_script,  # named when one of its labels cannot be read
        **extra,
        **meta,
    )
    from .region_eval_sets import register_region_eval_set  # it imports this package

    register_region_eval_set(name)  # "<name>_regions": FreeSeg's prompt-stage test set


def _attach_captions(dicts: list[dict], captions_json: str, dataset_name: str, script: str):
    data = _read_json(captions_json, dataset_name, "captions json", script)
    by_image: dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    for d in dicts:
        d["captions"] = by_image.get(d["image_id"], [])


def load_instance_split(
    *,
    dataset_name: str,
    json_file: str,
    image_root: str,
    categories: Sequence[dict],
    prepare_script: str,
    captions_json: Optional[str] = None,
) -> list[dict]:
    """Dataset dicts of a COCO-format instance split (detectron2's ``load_coco_json``), with
    each image's ``captions`` (list[str]) when ``captions_json`` is given."""
    from detectron2.data.datasets import load_coco_json

    if not os.path.isfile(json_file):
        raise _missing(dataset_name, "instance json", json_file, prepare_script)
    if not os.path.isdir(image_root):
        raise _missing(dataset_name, "image folder", image_root, prepare_script)
    # without a dataset name load_coco_json keeps the json's ids; ours are mapped here
    dicts = load_coco_json(json_file, image_root)
    contiguous = {c["id"]: i for i, c in enumerate(categories)}
    for d in dicts:
        for obj in d.get("annotations", []):
            if obj["category_id"] not in contiguous:
                raise ValueError(
                    f"Dataset {dataset_name!r}: {json_file} has an annotation of category id "
                    f"{obj['category_id']} of none of its {len(categories)} classes; re-run "
                    f"python datasets/{prepare_script}"
                )
            obj["category_id"] = contiguous[obj["category_id"]]
    if captions_json:
        _attach_captions(dicts, captions_json, dataset_name, prepare_script)
    return dicts


def register_instance_split(
    name: str,
    *,
    categories: Sequence[dict],
    unseen_ids: Sequence[int],
    image_root: str,
    json_file: str,
    prepare_script: str,
    captions_json: Optional[str] = None,
) -> None:
    """Register a COCO-format instance split (evaluator ``ovseg_instance``: mask AP).

    ``categories`` are the json's (all things), in increasing id order as ``load_coco_json``
    numbers them.
    """
    ids = [c["id"] for c in categories]
    if ids != sorted(ids) or not all(c["isthing"] for c in categories):
        raise ValueError(f"{name}: instance categories must be things in increasing id order")
    register_split(
        name,
        functools.partial(
            load_instance_split,
            dataset_name=name,
            json_file=json_file,
            image_root=image_root,
            categories=tuple(categories),
            prepare_script=prepare_script,
            captions_json=captions_json,
        ),
        image_root=image_root,
        json_file=json_file,
        evaluator_type="ovseg_instance",
        ignore_label=255,
        **category_metadata(categories, unseen_ids),
    )
