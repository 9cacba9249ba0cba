# Re-implements panopticapi's evaluation.py (cocodataset/panopticapi @7bb4655): same arguments,
# same matching rules, same return value; single process, no prints.
"""Panoptic quality (PQ, SQ, RQ) as ``panopticapi.evaluation.pq_compute`` computes it.

Per image, a ground-truth and a predicted segment of the same category match when their IoU
is above 0.5, the union not counting the prediction's VOID pixels (evaluation.py:132-134).
Unmatched non-crowd ground truth is a false negative; an unmatched prediction is a false
positive unless more than half of it lies on VOID or on a crowd region of its category
(evaluation.py:140-163). A category's PQ = sum IoU / (TP + FP/2 + FN/2); averages run over
the categories with TP + FP + FN > 0 (evaluation.py:49-73). Where panopticapi divides by zero
(no such category in an average) this reports 0 with ``n`` = 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types
from collections import defaultdict
from typing import Iterable, Optional

import numpy as np
from PIL import Image

__all__ = ["PQStat", "id2rgb", "panopticapi_provided", "pq_compute", "pq_compute_stats", "rgb2id"]

OFFSET = 256 * 256 * 256
VOID = 0


def rgb2id(color: np.ndarray) -> np.ndarray:
    """(H, W, 3) panoptic PNG colours -> (H, W) segment ids (``R + 256 G + 256**2 B``)."""
    color = np.asarray(color).astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 colours (inverse of :func:`rgb2id`)."""
    ids = np.asarray(id_map).astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


class PQStat:
    """Per-category accumulated IoU, TP, FP and FN."""

    def __init__(self):
        self.stats = defaultdict(lambda: {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0})

    def __getitem__(self, category_id):
        return self.stats[category_id]

    def average(self, category_ids: Iterable[int]) -> tuple[dict, dict]:
        """(``{"pq", "sq", "rq", "n"}``, per-category ``{"pq", "sq", "rq"}``) over
        ``category_ids``; categories with no TP, FP or FN are left out of the mean."""
        totals, per_class, n = {"pq": 0.0, "sq": 0.0, "rq": 0.0}, {}, 0
        for cat in category_ids:
            s = self.stats.get(cat, {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0})
            denom = s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"]
            if denom == 0:
                per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            res = {
                "pq": s["iou"] / denom,
                "sq": s["iou"] / s["tp"] if s["tp"] else 0,
                "rq": s["tp"] / denom,
            }
            per_class[cat] = res
            for key in totals:
                totals[key] += res[key]
        return {**{k: v / n if n else 0.0 for k, v in totals.items()}, "n": n}, per_class


def _read_ids(path: str) -> np.ndarray:
    with Image.open(path) as f:
        return rgb2id(np.asarray(f.convert("RGB"), dtype=np.uint32))


def _check_prediction(pan_pred, pred_segms, categories, image_id) -> None:
    labels, counts = np.unique(pan_pred, return_counts=True)
    unseen_ids = set(pred_segms)
    for label, count in zip(labels.tolist(), counts.tolist()):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(
                f"In the image with ID {image_id} segment with ID {label} is presented in PNG "
                "and not presented in JSON."
            )
        pred_segms[label]["area"] = count
        unseen_ids.discard(label)
        if pred_segms[label]["category_id"] not in categories:
            raise KeyError(
                f"In the image with ID {image_id} segment with ID {label} has unknown "
                f"category_id {pred_segms[label]['category_id']}."
            )
    if unseen_ids:
        raise KeyError(
            f"In the image with ID {image_id} the following segment IDs {sorted(unseen_ids)} "
            "are presented in JSON and not presented in PNG."
        )


def pq_image(stat: PQStat, pan_gt, pan_pred, gt_ann, pred_ann, categories) -> None:
    """Accumulate one image's matches into ``stat`` (panopticapi's pq_compute_single_core)."""
    gt_segms = {el["id"]: dict(el) for el in gt_ann["segments_info"]}
    pred_segms = {el["id"]: dict(el) for el in pred_ann["segments_info"]}
    _check_prediction(pan_pred, pred_segms, categories, gt_ann["image_id"])
    joint = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    labels, counts = np.unique(joint, return_counts=True)
    overlap = {(int(lab // OFFSET), int(lab % OFFSET)): int(c) for lab, c in zip(labels, counts)}

    gt_matched, pred_matched = set(), set()
    for (gt_id, pred_id), inter in overlap.items():
        if gt_id not in gt_segms or pred_id not in pred_segms:
            continue
        gt, pred = gt_segms[gt_id], pred_segms[pred_id]
        if gt["iscrowd"] == 1 or gt["category_id"] != pred["category_id"]:
            continue
        union = pred["area"] + gt["area"] - inter - overlap.get((VOID, pred_id), 0)
        iou = inter / union
        if iou > 0.5:
            stat[gt["category_id"]]["tp"] += 1
            stat[gt["category_id"]]["iou"] += iou
            gt_matched.add(gt_id)
            pred_matched.add(pred_id)

    crowd = {}
    for gt_id, gt in gt_segms.items():
        if gt_id in gt_matched:
            continue
        if gt["iscrowd"] == 1:
            crowd[gt["category_id"]] = gt_id
            continue
        stat[gt["category_id"]]["fn"] += 1
    for pred_id, pred in pred_segms.items():
        if pred_id in pred_matched:
            continue
        ignored = overlap.get((VOID, pred_id), 0)
        if pred["category_id"] in crowd:
            ignored += overlap.get((crowd[pred["category_id"]], pred_id), 0)
        if ignored / pred["area"] > 0.5:
            continue
        stat[pred["category_id"]]["fp"] += 1


def pq_compute_stats(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: Optional[str] = None,
    pred_folder: Optional[str] = None,
) -> tuple[PQStat, dict]:
    """The accumulated :class:`PQStat` of a prediction, and the gt json's categories by id."""
    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    gt_folder = gt_folder if gt_folder is not None else gt_json_file.replace(".json", "")
    pred_folder = pred_folder if pred_folder is not None else pred_json_file.replace(".json", "")
    for what, folder in (("ground truth", gt_folder), ("predicted", pred_folder)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Folder {folder} with {what} segmentations doesn't exist")
    categories = {el["id"]: el for el in gt_json["categories"]}
    preds = {el["image_id"]: el for el in pred_json["annotations"]}
    stat = PQStat()
    for gt_ann in gt_json["annotations"]:
        if gt_ann["image_id"] not in preds:
            raise KeyError(f"no prediction for the image with id: {gt_ann['image_id']}")
        pred_ann = preds[gt_ann["image_id"]]
        pan_gt = _read_ids(os.path.join(gt_folder, gt_ann["file_name"]))
        pan_pred = _read_ids(os.path.join(pred_folder, pred_ann["file_name"]))
        pq_image(stat, pan_gt, pan_pred, gt_ann, pred_ann, categories)
    return stat, categories


def pq_results(stat: PQStat, categories: dict) -> dict:
    """panopticapi's result dict: All / Things / Stuff averages and All's ``per_class``."""
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        ids = [
            c
            for c, info in categories.items()
            if isthing is None or (info["isthing"] == 1) == isthing
        ]
        results[name], per_class = stat.average(ids)
        if name == "All":
            results["per_class"] = per_class
    return results


def pq_compute(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: Optional[str] = None,
    pred_folder: Optional[str] = None,
) -> dict:
    """Drop-in for ``panopticapi.evaluation.pq_compute``.

    Args:
        gt_json_file, pred_json_file (str): COCO panoptic jsons (ground truth, prediction).
        gt_folder, pred_folder (str, optional): their PNG folders; default: the json's path
            without ``.json``.

    Returns:
        dict: ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {id: {...}}}``
        with fractions in [0, 1].
    """
    return pq_results(*pq_compute_stats(gt_json_file, pred_json_file, gt_folder, pred_folder))


@contextlib.contextmanager
def panopticapi_provided(compute=pq_compute):
    """Make ``panopticapi.utils`` (rgb2id, id2rgb) and ``panopticapi.evaluation``
    (``pq_compute`` = ``compute``) importable inside the block, for detectron2's
    ``COCOPanopticEvaluator``, which imports them in its methods; the previous modules (or
    their absence) are restored on exit."""
    names = ("panopticapi", "panopticapi.utils", "panopticapi.evaluation")
    saved = {n: sys.modules.get(n) for n in names}
    package = types.ModuleType("panopticapi")
    utils = types.ModuleType("panopticapi.utils")
    utils.rgb2id, utils.id2rgb = rgb2id, id2rgb
    evaluation = types.ModuleType("panopticapi.evaluation")
    evaluation.pq_compute = compute
    package.utils, package.evaluation = utils, evaluation
    sys.modules.update(dict(zip(names, (package, utils, evaluation))))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
