"""How good an instance pseudo-label store is: its pseudo instances against the ground truth.

A diagnosis, not a training signal: it reads the ground truth of the images the store
labelled (for a student's training set, the unseen classes' masks the student never reads),
so it tells whether a bad unseen score comes from the labels (the noun names the wrong
object, or a proposal that covers none) or from training on them.

Per class of the store's vocabulary: ``pseudo`` instances, ``gt`` instances (in the labelled
images), ``correct`` pseudo instances (mask IoU >= the threshold with a ground-truth instance
of their class), ``recalled`` ground-truth instances (such a pseudo instance covers them),
and what the other pseudo instances are, by the object they overlap most: ``loose`` (an
object of their class, IoU below the threshold: a poor mask of the right object),
``on_other`` (an object of another class: the noun was matched to the wrong object) or
``on_nothing`` (no object). ``named`` is the share whose most-overlapped object is of their
class (``correct`` + ``loose``): how often the noun picks the right object, whatever the
mask. ``confusions`` counts (noun class -> object class) of the ``on_other`` ones.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from ..utils.coco_masks import decode_segmentation
from ..vocab import normalize_name
from .instance_store import InstancePseudoLabelStore
from .instances import decode_mask
from .store import image_id_of

__all__ = ["format_quality", "instance_store_quality", "write_store_quality"]

_COUNTS = ("pseudo", "gt", "correct", "recalled", "loose", "on_other", "on_nothing")


def _gt_masks(dataset_dict: Mapping[str, Any], height: int, width: int) -> List[np.ndarray]:
    segs = [o["segmentation"] for o in dataset_dict["annotations"]]
    return [decode_segmentation(s, height, width) for s in segs]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _score_image(instances, gt, gt_names, counts, confusions, iou_threshold: float) -> None:
    """Count one image's pseudo instances (and the objects they recall) into ``counts``."""
    recalled = set()
    for inst in instances:
        mask = decode_mask(inst.mask)
        c = counts[inst.category]
        c["pseudo"] += 1
        ious = [_iou(mask, g) for g in gt]
        hits = [
            i for i, n in enumerate(gt_names) if n == inst.category and ious[i] >= iou_threshold
        ]
        best = int(np.argmax(ious)) if ious and max(ious) > 0 else None
        if hits:
            c["correct"] += 1
            recalled.update(hits)
        elif best is None:
            c["on_nothing"] += 1
        elif gt_names[best] == inst.category:
            c["loose"] += 1
        else:
            c["on_other"] += 1
            confusions[f"{inst.category} -> {gt_names[best]}"] += 1
    for i in recalled:
        counts[gt_names[i]]["recalled"] += 1


def instance_store_quality(
    store: InstancePseudoLabelStore,
    dataset_dicts: Sequence[Mapping[str, Any]],
    gt_class_names: Sequence[str],
    *,
    iou_threshold: float = 0.5,
) -> Dict[str, Any]:
    """Score every record of ``store`` against the ground truth of ``dataset_dicts``.

    Args:
        store: an instance pseudo-label store (XPM's).
        dataset_dicts: detectron2 instance dataset dicts of the labelled images
            ("annotations" with "category_id" and "segmentation"; images the store lacks are
            skipped).
        gt_class_names: the dataset's class names by contiguous id (metadata
            ``thing_classes``); matched to the store's vocabulary by normalised name.
        iou_threshold (float): mask IoU at which a pseudo instance covers an object.

    Returns:
        dict: ``images`` scored, ``iou_threshold``, ``classes`` {name: counts, precision,
        recall, unseen} and ``confusions`` {"noun class -> covered class": count}.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"IoU threshold {iou_threshold} is not in (0, 1]")
    vocab = {normalize_name(n): n for n in store.vocabulary}
    stray = [n for n in gt_class_names if normalize_name(n) not in vocab]
    if stray:
        raise ValueError(
            f"ground-truth classes {stray} are not in the store's vocabulary "
            f"{list(store.vocabulary)}; score a store made for this dataset"
        )
    to_vocab = [vocab[normalize_name(n)] for n in gt_class_names]
    counts = {n: Counter({k: 0 for k in _COUNTS}) for n in store.vocabulary}
    confusions: Counter = Counter()
    labelled, images = set(store.image_ids()), 0
    for d in dataset_dicts:
        image_id = image_id_of(d)
        if image_id not in labelled:
            continue
        record = store.read(image_id)
        images += 1
        gt = _gt_masks(d, int(record["height"]), int(record["width"]))
        gt_names = [to_vocab[obj["category_id"]] for obj in d.get("annotations", [])]
        for name in gt_names:
            counts[name]["gt"] += 1
        _score_image(record["instances"], gt, gt_names, counts, confusions, iou_threshold)
    unseen = {normalize_name(n) for n in store.unseen}
    classes = {}
    for name, c in counts.items():
        classes[name] = {
            **dict(c),
            "precision": c["correct"] / c["pseudo"] if c["pseudo"] else None,
            "recall": c["recalled"] / c["gt"] if c["gt"] else None,
            "named": (c["correct"] + c["loose"]) / c["pseudo"] if c["pseudo"] else None,
            "unseen": normalize_name(name) in unseen,
        }
    return {
        "images": images,
        "iou_threshold": float(iou_threshold),
        "classes": classes,
        "confusions": dict(confusions.most_common()),
    }


def format_quality(report: Mapping[str, Any]) -> str:
    """A report of :func:`instance_store_quality` as a markdown table (unseen names starred)."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        f"{report['images']} images, IoU >= {report['iou_threshold']:g}",
        "",
        "| class | pseudo | gt | precision | recall | named | loose | on other | on nothing |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in report["classes"].items():
        label = f"{name} *" if c["unseen"] else name
        lines.append(
            f"| {label} | {c['pseudo']} | {c['gt']} | {pct(c['precision'])} | "
            f"{pct(c['recall'])} | {pct(c['named'])} | {c['loose']} | {c['on_other']} | "
            f"{c['on_nothing']} |"
        )
    if report["confusions"]:
        top = ", ".join(f"{k}: {v}" for k, v in list(report["confusions"].items())[:8])
        lines += ["", f"confusions (noun -> object): {top}"]
    return "\n".join(lines)


def write_store_quality(store_root: str, output: str, dataset: str = "") -> Dict[str, Any]:
    """Score an instance store against its dataset's ground truth; write ``quality.json``
    and ``quality.md`` into ``output``.

    Args:
        store_root (str): an instance store's folder.
        output (str): the folder for the report.
        dataset (str): the registered dataset the store labels; default its manifest's.

    Returns:
        dict: the report (:func:`instance_store_quality`).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..utils.io import atomic_write_json, atomic_write_text, make_output_folder
    from .instance_store import store_kind

    if store_kind(store_root) != InstancePseudoLabelStore.KIND:
        raise ValueError(
            f"{store_root!r} is not an instance pseudo-label store (XPM's); the quality report "
            "scores pseudo instances, draw a semantic store without --quality"
        )
    store = InstancePseudoLabelStore.open(store_root)
    dataset = dataset or store.manifest.get("dataset") or ""
    if not dataset:
        raise ValueError(f"store {store_root!r} names no dataset in its manifest; give --dataset")
    report = instance_store_quality(
        store, DatasetCatalog.get(dataset), MetadataCatalog.get(dataset).thing_classes
    )
    if not report["images"]:
        raise ValueError(
            f"none of the {len(store.image_ids())} images of store {store_root!r} is in "
            f"dataset {dataset!r}; is --dataset the one it was generated for?"
        )
    make_output_folder(output)
    atomic_write_json(os.path.join(output, "quality.json"), report, indent=1)
    atomic_write_text(os.path.join(output, "quality.md"), format_quality(report) + "\n")
    return report
