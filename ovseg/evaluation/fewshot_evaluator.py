# Follows HSNet's episode evaluation (juhongm999/hsnet common/evaluation.py, common/logger.py
# AverageMeter), the metric LSeg's zero-shot tables report, re-written with numpy.
"""Novel-class mIoU and FB-IoU of the 2-way episode benchmarks (PASCAL-5i, COCO-20i folds;
FSS-1000).

For each episode (a query image, its class c, a 0/1/255 target) HSNet counts, over the pixels
whose target is not ignored, the intersection and union of the predicted and true background
(index 0) and foreground (index 1), and adds them into column c of (2, num_classes) buffers
(common/evaluation.py:17-37, logger.py:29-31). Then (logger.py:36-45):

- IoU[k, c] = inter[k, c] / max(union[k, c], 1); mIoU = mean over the fold's novel classes
  of IoU[1, c] (a novel class no episode drew counts as 0);
- FB-IoU = mean over k in {background, foreground} of
  sum_c inter[k, c] / sum_c union[k, c] (sums over the novel classes).

Both in percent. :func:`mean_over_folds` averages the four folds' results, as the papers'
"mean" column.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as np

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.datasets.fewshot_splits import NUM_FOLDS
from ..utils.io import atomic_write_json

__all__ = [
    "FewShotEpisodeEvaluator",
    "RESULT_FILE",
    "episode_areas",
    "fewshot_metrics",
    "load_fold_result",
    "mean_over_folds",
]

logger = logging.getLogger(__name__)

RESULT_FILE = "fewshot_evaluation.json"


def episode_areas(pred: np.ndarray, target: np.ndarray, ignore_label: int = 255):
    """Background/foreground intersection and union of one episode.

    Args:
        pred (np.ndarray): (H, W) predicted 0/1.
        target (np.ndarray): (H, W) 0/1, ``ignore_label`` where not scored.

    Returns:
        (np.ndarray, np.ndarray): (2,) intersection and (2,) union, index 0 background.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in size; "
            "the episode mapper sets height/width so the model scores the target's size"
        )
    valid = target != ignore_label
    p, t = pred[valid], target[valid]
    inter = np.array([np.sum((p == k) & (t == k)) for k in (0, 1)], dtype=np.float64)
    area_p = np.array([np.sum(p == k) for k in (0, 1)], dtype=np.float64)
    area_t = np.array([np.sum(t == k) for k in (0, 1)], dtype=np.float64)
    return inter, area_p + area_t - inter


def fewshot_metrics(
    inter: np.ndarray, union: np.ndarray, class_ids: Sequence[int]
) -> Dict[str, float]:
    """HSNet's mIoU and FB-IoU (percent) from (2, num_classes) accumulated areas.

    Args:
        inter, union (np.ndarray): (2, C) sums over episodes, column = episode class.
        class_ids: the fold's novel class ids (the classes averaged over).

    Returns:
        dict: "mIoU", "FB-IoU" and "IoU-<class id>" for each class id.
    """
    ids = list(class_ids)
    iou = inter[:, ids] / np.maximum(union[:, ids], 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        fb = inter[:, ids].sum(axis=1) / union[:, ids].sum(axis=1)
    out = {"mIoU": 100.0 * float(iou[1].mean()), "FB-IoU": 100.0 * float(fb.mean())}
    out.update({f"IoU-{c}": 100.0 * float(v) for c, v in zip(ids, iou[1])})
    return out


class FewShotEpisodeEvaluator(DatasetEvaluator):
    """Accumulate HSNet's per-class areas over a fold's test episodes; report mIoU / FB-IoU.

    Inputs need "sem_seg" (the 0/1/255 target the ``ovseg_binary_episode`` mapper makes) and
    "episode_class"; outputs "sem_seg" (2, H, W) scores over ``['others', class]``.
    Results go under the task "fewshot" (with per-class IoU by name) and, with an output
    folder, into ``fewshot_evaluation.json`` for :func:`mean_over_folds`.
    """

    def __init__(self, dataset_name: str, *, distributed: bool = True, output_dir: str = ""):
        meta = MetadataCatalog.get(dataset_name)
        for key in ("stuff_classes", "novel_class_ids"):
            if meta.get(key, None) is None:
                raise ValueError(
                    f"Dataset {dataset_name!r} has no {key!r} metadata; the episode evaluator "
                    "serves the pascal5i_* / coco20i_* / fss1000_* benchmarks"
                )
        self.dataset_name = dataset_name
        self.class_names = list(meta.stuff_classes)
        self.class_ids = [int(c) for c in meta.novel_class_ids]
        self.ignore_label = int(meta.get("ignore_label", 255))
        self.expected_episodes = meta.get("num_episodes", None)
        self.meta = meta
        self.distributed = distributed
        self.output_dir = output_dir
        self.reset()

    def reset(self) -> None:
        self.inter = np.zeros((2, len(self.class_names)))
        self.union = np.zeros((2, len(self.class_names)))
        self.episodes = 0

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            if "sem_seg" not in inp or "episode_class" not in inp:
                raise ValueError(
                    f"Input {inp.get('file_name', '')!r} lacks 'sem_seg' or 'episode_class'; "
                    "evaluate with INPUT.DATASET_MAPPER_NAME 'ovseg_binary_episode'"
                )
            scores = out["sem_seg"]
            if scores.shape[0] != 2:
                raise ValueError(f"Expected 2-way scores, got {tuple(scores.shape)}")
            pred = scores.argmax(dim=0).cpu().numpy()
            inter, union = episode_areas(pred, inp["sem_seg"].cpu().numpy(), self.ignore_label)
            c = int(inp["episode_class"])
            self.inter[:, c] += inter
            self.union[:, c] += union
            self.episodes += 1

    def evaluate(self):
        inter, union, episodes = self.inter, self.union, self.episodes
        if self.distributed:
            comm.synchronize()
            parts = comm.gather((inter, union, episodes))
            if not comm.is_main_process():
                return {}
            inter = sum(p[0] for p in parts)
            union = sum(p[1] for p in parts)
            episodes = sum(p[2] for p in parts)
        if self.expected_episodes is not None and episodes != self.expected_episodes:
            logger.warning(
                f"{self.dataset_name}: evaluated {episodes} episodes, the protocol has "
                f"{self.expected_episodes}"
            )
        metrics = fewshot_metrics(inter, union, self.class_ids)
        # detectron2's copypaste lines skip keys with '-' (FB-IoU): the summary is logged here
        logger.info(
            f"Few-shot results on {self.dataset_name} ({int(episodes)} episodes): "
            f"mIoU {metrics['mIoU']:.2f}, FB-IoU {metrics['FB-IoU']:.2f}"
        )
        res = OrderedDict(
            (k if not k.startswith("IoU-") else f"IoU-{self.class_names[int(k[4:])]}", v)
            for k, v in metrics.items()
        )
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            atomic_write_json(
                os.path.join(self.output_dir, RESULT_FILE),
                {
                    "dataset": self.dataset_name,
                    "benchmark": self.meta.get("benchmark", ""),
                    "fold": self.meta.get("fold", None),
                    "episodes": int(episodes),
                    "metrics": dict(res),
                    "intersection": inter.tolist(),
                    "union": union.tolist(),
                },
            )
        return OrderedDict(fewshot=res)


def mean_over_folds(results: Sequence[dict]) -> Dict[str, float]:
    """The mean mIoU and FB-IoU of one benchmark's folds, from ``fewshot_evaluation.json``
    contents; refuses duplicate folds or mixed benchmarks.

    Returns:
        dict: "mIoU", "FB-IoU" (means), "folds" (sorted fold ids) and per fold
        "mIoU-fold<k>", "FB-IoU-fold<k>".
    """
    if not results:
        raise ValueError("No fold results to average")
    benchmarks = {r.get("benchmark") for r in results}
    folds = [r.get("fold") for r in results]
    if len(benchmarks) != 1:
        raise ValueError(f"Fold results of different benchmarks {sorted(map(str, benchmarks))}")
    if len(set(folds)) != len(folds):
        raise ValueError(f"Fold results repeat a fold: {folds}")
    out: Dict[str, float] = {}
    for key in ("mIoU", "FB-IoU"):
        out[key] = float(np.mean([r["metrics"][key] for r in results]))
        for r in results:
            out[f"{key}-fold{r['fold']}"] = float(r["metrics"][key])
    out["folds"] = sorted(folds)
    if len(folds) != NUM_FOLDS:
        logger.warning(
            f"Averaged {len(folds)} folds {sorted(folds)}: the papers' mean is over all "
            f"{NUM_FOLDS} folds; give every fold's result for it"
        )
    return out


def load_fold_result(path: str) -> dict:
    """Read one ``fewshot_evaluation.json`` (a file or the folder holding it)."""
    if os.path.isdir(path):
        path = os.path.join(path, RESULT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist; evaluate a pascal5i_* / coco20i_* fold first (train_net.py "
            f"--eval-only writes <OUTPUT_DIR>/inference/{RESULT_FILE}, or inference_<n> when "
            "an earlier evaluation is there: the folder it logs)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run its evaluation") from e
    metrics = result.get("metrics") if isinstance(result, dict) else None
    if (
        not isinstance(metrics, dict)
        or not all(isinstance(metrics.get(k), (int, float)) for k in ("mIoU", "FB-IoU"))
        or not isinstance(result.get("fold"), int)
    ):
        raise ValueError(
            f"{path} is not a {RESULT_FILE} (it needs a 'fold' and 'metrics' with 'mIoU' and "
            "'FB-IoU'); give the files a pascal5i_* / coco20i_* evaluation wrote"
        )
    return result
