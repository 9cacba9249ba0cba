# Follows the official FreeSeg ClassificationEvaluator (mask2former/evaluation/
# classification_evaluation.py:14-170), re-written.
"""Region classification: top-1 / top-5 accuracy of ground-truth regions, overall, on seen
and on unseen classes, and the mean class accuracy.

A model output ``{"classification": (K,) or (1, K) logits}`` over its input's
``"vocabulary"`` is scored against the input's ``instances.gt_classes[0]`` (the
``ovseg_region`` mapper's one region). A region is top-k correct when fewer than k classes
score strictly above its class (ties count for it). Reported in percent:

- ``top1``, ``top5``: over all regions (official ``macc_top1``/``macc_top5``, ``:103-105``);
- ``top1-seen``/``top1-unseen``, ``top5-seen``/``top5-unseen``: over the regions of the
  dataset's seen / unseen classes (``unseen_classes`` metadata; official: per
  ``evaluation_set``, ``:126-142``), present only when such regions exist;
- ``mACC``, ``mACC-seen``, ``mACC-unseen``: top-1 accuracy per class, averaged over the
  classes with at least one region (official ``mmacc_top1``, ``:119-144``, averages over
  every class and counts a class without regions as 0 %, ``safe_mean`` ``:148-152``).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import OrderedDict, defaultdict
from typing import Dict, List, Tuple

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from ..vocab import normalize_name

__all__ = ["RegionClassificationEvaluator", "region_accuracies"]

logger = logging.getLogger(__name__)

Record = Tuple[str, int, bool]  # (class name, rank of the true class, unseen)


def region_accuracies(records: List[Record]) -> Dict[str, float]:
    """The metrics of the module docstring from (class, rank, unseen) per region."""
    out: Dict[str, float] = OrderedDict()

    def top(rows, k):
        return 100.0 * sum(r < k for _, r, _ in rows) / len(rows)

    groups = {"": records}
    groups["-seen"] = [r for r in records if not r[2]]
    groups["-unseen"] = [r for r in records if r[2]]
    for suffix, rows in groups.items():
        if rows:
            out[f"top1{suffix}"], out[f"top5{suffix}"] = top(rows, 1), top(rows, 5)
    per_class: Dict[Tuple[str, bool], list] = defaultdict(list)
    for row in records:
        per_class[(row[0], row[2])].append(row)
    for suffix, unseen in (("", None), ("-seen", False), ("-unseen", True)):
        accs = [top(rows, 1) for (_, u), rows in per_class.items() if unseen in (None, u)]
        if accs:
            # fsum rounds once, so the mean does not depend on the order the classes first
            # appear in; under several processes that order is the gather's (rank 0's regions,
            # then rank 1's, ...), and a plain sum differed from one process's in the last bit
            out[f"mACC{suffix}"] = math.fsum(accs) / len(accs)
    return out


class RegionClassificationEvaluator(DatasetEvaluator):
    """Accuracy of region classification (see the module docstring)."""

    def __init__(self, dataset_name: str, distributed: bool = True):
        """
        Args:
            dataset_name (str): a registered region set; its ``unseen_classes`` split the
                metrics.
            distributed (bool): gather every rank's regions before scoring.
        """
        meta = MetadataCatalog.get(dataset_name)
        self._unseen = {normalize_name(n) for n in (meta.get("unseen_classes", None) or ())}
        self._distributed = distributed
        self._dataset_name = dataset_name
        self._records: List[Record] = []

    def reset(self) -> None:
        self._records = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            logits = out.get("classification")
            if logits is None:
                continue
            logits = logits.detach().flatten().float().cpu()
            names = inp["vocabulary"]
            if logits.numel() != len(names):
                raise ValueError(
                    f"{inp.get('file_name', '')!r}: {logits.numel()} logits for a "
                    f"{len(names)}-name vocabulary"
                )
            target = int(inp["instances"].gt_classes[0])
            rank = int((logits > logits[target]).sum())
            name = normalize_name(names[target])
            self._records.append((name, rank, name in self._unseen))

    def evaluate(self):
        records = self._records
        if self._distributed:
            comm.synchronize()
            records = list(itertools.chain(*comm.gather(records, dst=0)))
            if not comm.is_main_process():
                return {}
        if not records:
            logger.warning("No region classified on %s", self._dataset_name)
            return {}
        res = region_accuracies(records)
        # detectron2's print_csv_format skips keys containing '-': without this summary the
        # seen / unseen accuracies would reach no log
        logger.info(
            f"Region classification on {self._dataset_name} ({len(records)} regions):\n"
            + create_small_table(res)
        )
        return {"classification": res}
