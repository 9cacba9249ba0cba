"""Open-vocabulary panoptic evaluation: PQ, SQ, RQ (all / things / stuff) and per split.

detectron2's ``COCOPanopticEvaluator`` run with ovseg's :func:`pq_compute` in place of
panopticapi's (which is not installable from PyPI): inside ``process``/``evaluate`` the
modules it imports are ovseg's (:func:`panopticapi_provided`). Per split, PQ/SQ/RQ average the
split's categories as panopticapi averages All (categories without TP, FP or FN left out; a
split with none of them is NaN, not measured, as mIoU and AP splits are). FreeSeg's release
averages panopticapi's ``per_class`` entries instead, where such a category counts 0: equal
whenever every category of the split occurs (COCO's and ADE20K's validation sets).
Outputs without ``"panoptic_seg"`` are skipped, so a semantic-only student can be evaluated on
a panoptic dataset by the other evaluators.
"""

from __future__ import annotations

import logging
from typing import Optional

from detectron2.evaluation import COCOPanopticEvaluator

from .instance_evaluator import log_split_results
from .panoptic_quality import panopticapi_provided, pq_compute_stats, pq_results

__all__ = ["OpenVocabPanopticEvaluator"]

logger = logging.getLogger(__name__)


class OpenVocabPanopticEvaluator(COCOPanopticEvaluator):
    """PQ with seen/unseen results (keys ``PQ-seen``, ``SQ-unseen``, ...)."""

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        super().__init__(dataset_name, output_dir=output_dir)
        meta = self._metadata
        unseen = set(meta.get("unseen_classes", []) or [])
        names = meta.stuff_classes
        ids = meta.stuff_dataset_id_to_contiguous_id
        self._splits = {
            split: [k for k, v in ids.items() if (names[v] in unseen) == (split == "unseen")]
            for split in ("seen", "unseen")
        } if unseen else {}  # fmt: skip
        self._stat = None

    def process(self, inputs, outputs):
        pairs = [(i, o) for i, o in zip(inputs, outputs) if "panoptic_seg" in o]
        if pairs:
            with panopticapi_provided():
                super().process([i for i, _ in pairs], [o for _, o in pairs])

    def _compute(self, gt_json_file, pred_json_file, gt_folder=None, pred_folder=None):
        self._stat, categories = pq_compute_stats(
            gt_json_file, pred_json_file, gt_folder, pred_folder
        )
        return pq_results(self._stat, categories)

    def evaluate(self):
        if not self._distributed_any():
            logger.warning("No panoptic predictions: PQ not computed")
            return {}
        with panopticapi_provided(self._compute):
            results = super().evaluate()
        if results is None or self._stat is None:
            return results
        for split, ids in self._splits.items():
            avg, _ = self._stat.average(ids)
            for key in ("pq", "sq", "rq"):
                value = 100 * avg[key] if avg["n"] else float("nan")  # nothing to score
                results["panoptic_seg"][f"{key.upper()}-{split}"] = value
        log_split_results("PQ", self._metadata.name, results["panoptic_seg"], logger)
        return results

    def _distributed_any(self) -> bool:
        from detectron2.utils import comm

        return any(comm.all_gather(bool(self._predictions)))
