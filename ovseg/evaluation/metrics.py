"""Semantic-segmentation metrics from a confusion matrix (pure numpy).

Conventions follow detectron2's ``SemSegEvaluator`` (values in percent, ``IoU-<name>`` and
``ACC-<name>`` per class), with one deliberate choice spelled out: ``mIoU`` averages over
every class whose union is non-empty (ground truth or prediction present), so a class that
is predicted but absent from the ground truth counts as IoU 0, as in mmsegmentation
(ZegCLIP's and MaskCLIP+'s ``eval_metrics``: intersection / union, NaN-mean) and detectron2
v0.6 (``sem_seg_evaluation.py:136-142``: the sum over ground-truth classes divided by the
number of non-empty unions; SAN's ``install.sh`` pins v0.6). detectron2 after v0.6 averages
over the classes with ground truth only (``iou_valid = acc_valid & (union > 0)``), and
CAT-Seg installs that one (its ``requirements.txt``: detectron2 from git): ``mIoU-gt`` is
that mean, the number to compare with CAT-Seg's on benchmarks whose validation set lacks some
classes (ADE20K-847, PASCAL Context-459). Classes with an empty union are left out of every
mean and get no ``IoU-<name>`` key at all (rather than a misleading 0 or a NaN).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["segmentation_metrics", "harmonic_iou"]


def harmonic_iou(seen: float, unseen: float) -> float:
    """Harmonic mean of seen and unseen mIoU, ``2SU / (S + U)``; 0 when both are 0.

    Args:
        seen (float): mIoU over the seen classes (any unit, e.g. percent).
        unseen (float): mIoU over the unseen classes, same unit.

    Returns:
        float: the harmonic mean in the same unit; NaN if either input is NaN (a group
        without any evaluated class has no mean).
    """
    if np.isnan(seen) or np.isnan(unseen):
        return float("nan")
    if seen + unseen == 0:
        return 0.0
    return float(2.0 * seen * unseen / (seen + unseen))


def _check_inputs(
    conf: np.ndarray, class_names: Sequence[str], unseen: Iterable[str]
) -> tuple[np.ndarray, list[str], list[str]]:
    conf = np.asarray(conf)
    names = [str(n) for n in class_names]
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(
            f"conf must be a square (K, K) matrix with conf[gt, pred] pixel counts; got shape "
            f"{tuple(conf.shape)}."
        )
    if conf.shape[0] != len(names):
        raise ValueError(
            f"conf has shape {tuple(conf.shape)} but {len(names)} class names were given; "
            f"conf must be (K, K) with K == len(class_names)."
        )
    if len(names) == 0:
        raise ValueError("class_names is empty: there is nothing to evaluate.")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"class_names contains duplicates {dupes}; per-class keys would clash.")
    if not (np.issubdtype(conf.dtype, np.number) or conf.dtype == bool):
        raise ValueError(f"conf must hold numbers (pixel counts), got dtype {conf.dtype}.")
    conf = conf.astype(np.float64)
    if not np.all(np.isfinite(conf)) or np.any(conf < 0):
        raise ValueError("conf must hold finite, non-negative pixel counts.")
    if isinstance(unseen, str):
        raise ValueError(
            f"unseen must be a collection of class names, not the string {unseen!r}; "
            f"wrap a single name in a list: [{unseen!r}]."
        )
    unseen = [str(u) for u in unseen]
    unknown = [u for u in unseen if u not in names]
    if unknown:
        raise ValueError(
            f"unseen class names {unknown} are not among the {len(names)} class names "
            f"(first few: {names[:5]}); check the dataset's unseen_classes metadata."
        )
    return conf, names, unseen


def _mean(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``values[mask]`` in percent, NaN for an empty selection."""
    if not mask.any():
        return float("nan")
    return float(100.0 * values[mask].mean())


def segmentation_metrics(
    conf: np.ndarray, class_names: Sequence[str], unseen: Iterable[str] = ()
) -> dict[str, float]:
    """Compute semantic-segmentation metrics, in percent, from a confusion matrix.

    Args:
        conf (ndarray): (K, K) pixel counts; ``conf[g, p]`` counts pixels whose ground truth
            is class ``g`` and whose prediction is class ``p``. Ignored pixels must already
            be removed.
        class_names (Sequence[str]): the K class names, in label order.
        unseen (Iterable[str]): names of the unseen classes of a zero-shot split; when
            non-empty, ``mIoU-seen``, ``mIoU-unseen`` and ``hIoU`` are added.

    Returns:
        dict[str, float]: ``mIoU`` (mean over classes with a non-empty union), ``fwIoU``
        (IoU weighted by ground-truth pixel frequency), ``IoU-<name>`` per class with a
        non-empty union, ``mACC`` (mean over classes with ground truth), ``pACC`` (pixel
        accuracy), ``ACC-<name>`` per class with ground truth, ``mIoU-gt`` (mean over the
        classes with ground truth, detectron2 after v0.6 / CAT-Seg), and with a split
        ``mIoU-seen``, ``mIoU-unseen`` (each over its classes with a non-empty union; NaN
        when a group has none) and ``hIoU`` = 2SU/(S+U) (0 when both are 0).

    Raises:
        ValueError: for a non-square matrix, a size that differs from ``len(class_names)``,
            negative or non-finite counts, an empty matrix, duplicate class names, or unseen
            names that are not class names.
    """
    conf, names, unseen = _check_inputs(conf, class_names, unseen)
    total = conf.sum()
    if total == 0:
        raise ValueError(
            "conf is all zeros: no valid (non-ignored) pixel was evaluated, so no metric is "
            "defined. Check that the ground truth is not entirely ignore_label."
        )

    tp = np.diag(conf)
    gt = conf.sum(axis=1)
    pred = conf.sum(axis=0)
    union = gt + pred - tp
    iou_valid = union > 0
    acc_valid = gt > 0
    iou = np.zeros_like(tp)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    acc = np.zeros_like(tp)
    acc[acc_valid] = tp[acc_valid] / gt[acc_valid]

    res: dict[str, float] = {}
    res["mIoU"] = _mean(iou, iou_valid)
    # classes without ground truth weigh 0, so only ground-truth classes contribute
    res["fwIoU"] = float(100.0 * np.sum(iou[iou_valid] * gt[iou_valid] / total))
    for i, name in enumerate(names):
        if iou_valid[i]:
            res[f"IoU-{name}"] = float(100.0 * iou[i])
    res["mACC"] = _mean(acc, acc_valid)
    res["pACC"] = float(100.0 * tp.sum() / total)
    for i, name in enumerate(names):
        if acc_valid[i]:
            res[f"ACC-{name}"] = float(100.0 * acc[i])
    res["mIoU-gt"] = _mean(iou, acc_valid)

    if unseen:
        unseen_set = set(unseen)
        is_unseen = np.array([n in unseen_set for n in names])
        seen_miou = _mean(iou, iou_valid & ~is_unseen)
        unseen_miou = _mean(iou, iou_valid & is_unseen)
        res["mIoU-seen"] = seen_miou
        res["mIoU-unseen"] = unseen_miou
        res["hIoU"] = harmonic_iou(seen_miou, unseen_miou)
    return res
