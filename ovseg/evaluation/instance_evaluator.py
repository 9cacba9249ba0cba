"""Open-vocabulary instance evaluation: COCO mask AP, AP50, AP75, overall and per split.

detectron2's ``COCOEvaluator`` with ``use_fast_impl=False`` (pycocotools; detectron2's fast
COCOeval needs its compiled ops). Predicted classes index the dataset's ``stuff_classes``
(Mask2Former's convention, so ADE's things need not be contiguous, as its
``InstanceSegEvaluator``); predictions of stuff classes are dropped. Per split (seen /
unseen), AP averages the precision of the split's categories over IoU 0.50:0.95, AP50 and
AP75 at one IoU, all at area "all" and 100 detections: XPM's per-split AP50 is the second.

A dataset registered as one of XPM's evaluation sets (metadata ``eval_set``, see
``ovseg/data/datasets/instance_eval_sets.py``) is scored on its categories only and on the
images holding one of them, as XPM's per-set jsons are (``construct_coco_json.py:262-282``).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from typing import Optional

import numpy as np

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.utils.logger import create_small_table

from ..compat import evaluate_predictions_on_coco
from ..utils.io import atomic_write_text

__all__ = [
    "OpenVocabInstanceEvaluator",
    "evaluate_on_categories",
    "log_split_results",
    "split_average_precision",
]

logger = logging.getLogger(__name__)


def log_split_results(what: str, dataset_name: str, results: dict, log=logger) -> None:
    """Log the seen / unseen keys of ``results`` (``AP50-unseen``, ...) as one table to
    ``log``: detectron2's print_csv_format skips keys containing '-', so they reach no log
    else."""
    split = {k: v for k, v in results.items() if k.endswith(("-seen", "-unseen"))}
    if split:
        log.info(f"{what} per split on {dataset_name}:\n" + create_small_table(split))


def split_average_precision(coco_eval, category_ids) -> dict:
    """AP, AP50, AP75 (percent) over ``category_ids`` from a run COCOeval; NaN without gt.

    Args:
        coco_eval: an evaluated, accumulated ``COCOeval``.
        category_ids: dataset category ids of the split.
    """
    precision = coco_eval.eval["precision"]  # (iou, recall, category, area, max dets)
    index = {c: k for k, c in enumerate(coco_eval.params.catIds)}
    ks = [index[c] for c in category_ids if c in index]
    ious = np.asarray(coco_eval.params.iouThrs)
    out = {}
    for name, rows in (
        ("AP", slice(None)),
        ("AP50", np.isclose(ious, 0.5)),
        ("AP75", np.isclose(ious, 0.75)),
    ):
        values = precision[rows][:, :, ks, 0, -1] if ks else np.zeros(0)
        values = values[values > -1]
        out[name] = float(values.mean() * 100) if values.size else float("nan")
    return out


def evaluate_on_categories(coco_gt, results, category_ids):
    """Mask COCOeval over ``category_ids`` only, on the images with an annotation of one.

    Args:
        coco_gt (COCO): the ground truth (the split's json).
        results (list[dict]): COCO results with dataset category ids.
        category_ids: the evaluation set's dataset category ids.

    Returns:
        COCOeval: evaluated, accumulated and summarised.
    """
    from pycocotools.cocoeval import COCOeval

    ids = sorted(category_ids)
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(catIds=ids))
    # without "bbox" pycocotools takes each result's area from its mask (as detectron2 does)
    coco_dt = coco_gt.loadRes([{k: v for k, v in r.items() if k != "bbox"} for r in results])
    coco_eval = COCOeval(coco_gt, coco_dt, "segm")
    coco_eval.params.catIds = ids
    coco_eval.params.imgIds = sorted({a["image_id"] for a in anns})
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


class OpenVocabInstanceEvaluator(COCOEvaluator):
    """COCO mask AP with seen/unseen results (keys ``AP-seen``, ``AP50-unseen``, ...)."""

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, distributed=True):
        """
        Args:
            dataset_name (str): a registered dataset with ``json_file`` and thing metadata.
            output_dir (str, optional): where predictions are written.
            distributed (bool): gather predictions from every process.
        """
        super().__init__(
            dataset_name,
            tasks=("segm",),
            distributed=distributed,
            output_dir=output_dir,
            use_fast_impl=False,
        )
        meta = self._metadata
        self._to_dataset_id = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
        unseen = set(meta.get("unseen_classes", []) or [])
        names = meta.stuff_classes
        self._splits = {
            split: [
                k for k, v in meta.thing_dataset_id_to_contiguous_id.items()
                if (names[v] in unseen) == (split == "unseen")
            ]
            for split in ("seen", "unseen")
        } if unseen else {}  # fmt: skip
        self._splits = {k: v for k, v in self._splits.items() if v}
        # one of XPM's evaluation sets: only its categories, on its images
        self._eval_set = meta.get("eval_set", None)

    def _eval_predictions(self, predictions, img_ids=None):
        results = list(itertools.chain(*[x["instances"] for x in predictions]))
        kept = [r for r in results if r["category_id"] in self._to_dataset_id]
        if len(kept) < len(results):
            logger.warning(
                "%d instance predictions of non-thing classes dropped", len(results) - len(kept)
            )
        for r in kept:
            r["category_id"] = self._to_dataset_id[r["category_id"]]
        if self._output_dir:  # as detectron2's: the results a COCO server or a study reads
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            logger.info("Saving results to %s", path)
            atomic_write_text(path, json.dumps(kept))
        if not self._do_evaluation:
            logger.info("%s has no annotations to evaluate against", self._metadata.name)
            return
        if self._eval_set is not None and kept:
            ids = list(self._to_dataset_id.values())
            coco_eval = evaluate_on_categories(self._coco_api, kept, ids)
        else:
            coco_eval = self._evaluate_all(kept, img_ids)
        res = self._derive_coco_results(coco_eval, "segm", self._metadata.get("thing_classes"))
        nan = {key: float("nan") for key in ("AP", "AP50", "AP75")}  # no predictions at all
        for split, ids in self._splits.items():
            for key, value in (
                split_average_precision(coco_eval, ids) if coco_eval else nan
            ).items():
                res[f"{key}-{split}"] = value
        log_split_results("Mask AP", self._metadata.name, res)
        self._results["segm"] = res

    def _evaluate_all(self, kept, img_ids):
        return (
            evaluate_predictions_on_coco(
                _evaluate_predictions_on_coco,
                self._coco_api,
                kept,
                "segm",
                img_ids=img_ids,
                max_dets_per_image=self._max_dets_per_image,
            )
            if kept
            else None
        )
