"""Reference points for zero-shot results: what chance and "perfect masks, random names" score.

A number like "unseen mIoU 13" means little without the floor it must clear. Both baselines
accumulate one confusion matrix over a dataset, exactly as the evaluator does, so they are
comparable with :class:`~ovseg.evaluation.OpenVocabSemSegEvaluator` results.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..utils.coco_masks import decode_segmentation
from .metrics import segmentation_metrics

__all__ = [
    "MASK_BASELINES",
    "ground_truth_segments",
    "mask_baseline",
    "oracle_masks_random_names",
    "uniform_baseline",
]


def _confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    idx = gt.astype(np.int64) * num_classes + pred.astype(np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def uniform_baseline(
    labels: Iterable[np.ndarray],
    class_names: Sequence[str],
    *,
    unseen: Sequence[str] = (),
    ignore_label: int = 255,
    seed: int = 0,
) -> dict:
    """Metrics of a predictor that names every pixel uniformly at random.

    Args:
        labels: ground-truth label maps, (H, W) integer arrays.
        class_names: the K names the labels index.
        unseen: names of the unseen classes (adds mIoU-seen/unseen/hIoU).
        ignore_label: label value excluded from evaluation.
        seed: seed of the random predictions.

    Returns:
        dict: :func:`~ovseg.evaluation.segmentation_metrics` of the random predictions.
    """
    k = len(class_names)
    rng = np.random.default_rng(seed)
    conf = np.zeros((k, k), np.int64)
    for label in labels:
        valid = label != ignore_label
        gt = label[valid]
        conf += _confusion(gt, rng.integers(0, k, size=gt.shape), k)
    return segmentation_metrics(conf, class_names, unseen=unseen)


def oracle_masks_random_names(
    labels: Iterable[np.ndarray],
    class_names: Sequence[str],
    *,
    unseen: Sequence[str] = (),
    ignore_label: int = 255,
    seed: int = 0,
    draws: int = 10,
) -> dict:
    """Metrics of perfect masks whose names are drawn at random.

    Every class region of every image (all its pixels of one ground-truth class) is kept as
    one perfect mask and given a name drawn uniformly from the vocabulary; the metrics are
    averaged over ``draws`` independent drawings. A method that segments well but cannot name
    what it segments scores about this much, so a zero-shot result should clear it.

    Args:
        labels, class_names, unseen, ignore_label, seed: as in :func:`uniform_baseline`.
        draws: number of independent name drawings averaged.

    Returns:
        dict: metrics averaged over the drawings (keys present in every drawing).
    """
    k = len(class_names)
    labels = [np.asarray(x) for x in labels]
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(draws):
        conf = np.zeros((k, k), np.int64)
        for label in labels:
            valid = label != ignore_label
            gt = label[valid].astype(np.int64)
            names = rng.integers(0, k, size=k)  # one name per class region of this image
            conf += _confusion(gt, names[gt], k)
        runs.append(segmentation_metrics(conf, class_names, unseen=unseen))
    keys = set.intersection(*(set(r) for r in runs))
    return {key: float(np.mean([r[key] for r in runs])) for key in runs[0] if key in keys}


# ------------------------------------------------------------- panoptic (PQ) and instance (AP)
MASK_BASELINES = ("uniform", "oracle_masks_random_names", "oracle")


def ground_truth_segments(
    record: dict,
) -> tuple[tuple[int, int], list[tuple[np.ndarray, int, bool]]]:
    """((H, W), [(mask, contiguous class, crowd)]) from a panoptic or instance record."""
    from PIL import Image

    from .panoptic_quality import rgb2id

    if "pan_seg_file_name" in record:
        with Image.open(record["pan_seg_file_name"]) as im:
            ids = rgb2id(np.asarray(im.convert("RGB")))
        segs = [(ids == s["id"], s["category_id"], bool(s.get("iscrowd", 0)))
                for s in record["segments_info"]]  # fmt: skip
        return ids.shape, segs
    h, w = record["height"], record["width"]
    segs = [
        (decode_segmentation(a["segmentation"], h, w), a["category_id"], bool(a.get("iscrowd", 0)))
        for a in record.get("annotations", [])
    ]
    return (h, w), segs


def _predicted_masks(record: dict, kind: str, classes: Sequence[int], rng) -> tuple:
    """((H, W), [(mask, class)]) of one baseline on one image."""
    shape, gt = ground_truth_segments(record)
    if kind == "uniform":  # every pixel named at random; one mask per class named
        label = np.asarray(classes)[rng.integers(0, len(classes), size=shape)]
        return shape, [(label == c, int(c)) for c in classes if (label == c).any()]
    kept = [(m, c) for m, c, crowd in gt if not crowd and m.any()]
    if kind == "oracle_masks_random_names":
        names = np.asarray(classes)[rng.integers(0, len(classes), size=len(kept))]
        kept = [(m, int(n)) for (m, _), n in zip(kept, names)]
    return shape, kept


def _panoptic_output(shape, masks, things):
    import torch

    ids = np.zeros(shape, np.int32)  # 0 = VOID (crowd regions of the oracles)
    info = []
    for k, (m, c) in enumerate(masks, 1):
        ids[m] = k
        info.append({"id": k, "category_id": c, "isthing": c in things})
    return torch.from_numpy(ids), info


def _instances_output(shape, masks, rng):
    import torch

    from detectron2.structures import BitMasks, Instances

    inst = Instances(shape)
    stack = np.stack([m for m, _ in masks]) if masks else np.zeros((0, *shape), bool)
    inst.pred_masks = torch.from_numpy(stack)
    inst.pred_boxes = BitMasks(inst.pred_masks).get_bounding_boxes()
    inst.scores = torch.from_numpy(rng.random(len(masks)).astype(np.float32))
    inst.pred_classes = torch.tensor([c for _, c in masks], dtype=torch.int64)
    return inst


def mask_baseline(dataset_name: str, kind: str = "oracle_masks_random_names", seed: int = 0):
    """PQ (panoptic datasets) and mask AP (datasets with an instance json) of a baseline.

    ``"uniform"`` names every pixel at random (one segment / instance per class named);
    ``"oracle_masks_random_names"`` keeps every non-crowd ground-truth segment as a perfect
    mask and draws its name uniformly from the dataset's classes (things only for AP);
    ``"oracle"`` keeps the true names too (PQ = AP = 100, a check of the evaluation). Scored
    by the same evaluators as the students (``OpenVocabPanopticEvaluator``,
    ``OpenVocabInstanceEvaluator``), seen/unseen splits included; instance scores are random.

    Args:
        dataset_name (str): a registered dataset of evaluator type ``ovseg_panoptic`` or
            ``ovseg_instance``.
        kind (str): one of :data:`MASK_BASELINES`.
        seed (int): seed of the random names, pixels and scores.

    Returns:
        dict: the evaluators' results, e.g. ``{"panoptic_seg": {"PQ", "PQ-unseen", ...},
        "segm": {"AP", "AP50-unseen", ...}}``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .instance_evaluator import OpenVocabInstanceEvaluator
    from .panoptic_evaluator import OpenVocabPanopticEvaluator

    if kind not in MASK_BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; baselines are {MASK_BASELINES}")
    meta = MetadataCatalog.get(dataset_name)
    kind_of_data = meta.get("evaluator_type", None)
    if kind_of_data not in ("ovseg_panoptic", "ovseg_instance"):
        raise ValueError(
            f"dataset {dataset_name!r} has evaluator_type {kind_of_data!r}; PQ / AP baselines "
            "need a panoptic (ovseg_panoptic) or instance (ovseg_instance) dataset"
        )
    panoptic = kind_of_data == "ovseg_panoptic"
    evaluators = [OpenVocabPanopticEvaluator(dataset_name)] if panoptic else []
    if meta.get("json_file", None):
        evaluators.append(OpenVocabInstanceEvaluator(dataset_name))
    things = sorted(meta.thing_dataset_id_to_contiguous_id.values())
    all_classes = list(range(len(meta.stuff_classes)))
    rng = np.random.default_rng(seed)
    for e in evaluators:
        e.reset()
    for d in DatasetCatalog.get(dataset_name):
        output = {}
        if panoptic:
            output["panoptic_seg"] = _panoptic_output(
                *_predicted_masks(d, kind, all_classes, rng), things
            )
        if len(evaluators) > int(panoptic):
            shape, masks = _predicted_masks(d, kind, things, rng)
            output["instances"] = _instances_output(
                shape, [(m, c) for m, c in masks if c in things], rng
            )
        inputs = {"file_name": d["file_name"], "image_id": d["image_id"]}
        for e in evaluators:
            e.process([inputs], [output])
    results = {}
    for e in evaluators:
        results.update(e.evaluate() or {})
    return results
