"""Reference points for zero-shot results: what chance and "perfect masks, random names" score.

A number like "unseen mIoU 13" means little without the floor it must clear. Both baselines
accumulate one confusion matrix over a dataset, exactly as the evaluator does, so they are
comparable with :class:`~ovseg.evaluation.OpenVocabSemSegEvaluator` results.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .metrics import segmentation_metrics

__all__ = ["uniform_baseline", "oracle_masks_random_names"]


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
