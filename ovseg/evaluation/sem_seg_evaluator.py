"""Open-vocabulary semantic-segmentation evaluator: confusion matrix, seen/unseen mIoU, hIoU.

Shaped like detectron2's ``SemSegEvaluator`` (same inputs, same ``sem_seg`` result keys, same
``sem_seg_evaluation.pth``), plus the zero-shot split metrics of ``segmentation_metrics`` and
the saved confusion matrix.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image
from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ..utils.io import atomic_write
from .metrics import segmentation_metrics

__all__ = ["OpenVocabSemSegEvaluator", "load_sem_seg_gt"]

logger = logging.getLogger(__name__)


def load_sem_seg_gt(path: str) -> np.ndarray:
    """Read a label PNG (one class index per pixel) into an int64 array.

    Args:
        path (str): path of a single-channel label image.

    Returns:
        ndarray: (H, W) int64 labels.
    """
    if not PathManager.exists(path):
        raise FileNotFoundError(f"Ground-truth label file {path} does not exist.")
    with PathManager.open(path, "rb") as f:
        gt = np.asarray(Image.open(f), dtype=np.int64)
    if gt.ndim != 2:
        raise ValueError(
            f"Ground-truth label file {path} has shape {gt.shape}; expected a single-channel "
            f"(H, W) image of class indices (see datasets/prepare_*.py)."
        )
    return gt


class OpenVocabSemSegEvaluator(DatasetEvaluator):
    """Semantic-segmentation evaluator with seen/unseen mIoU and hIoU for zero-shot splits.

    Accumulates a (K, K) confusion matrix ``conf[gt, pred]`` over non-ignored pixels, sums it
    over processes when distributed, and reports ``segmentation_metrics`` in percent under
    the ``"sem_seg"`` task, so detectron2's ``print_csv_format`` prints the ``copypaste:``
    lines.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: str | None = None,
        save_confusion_matrix: bool = True,
    ):
        """
        Args:
            dataset_name (str): a registered dataset; its metadata gives ``stuff_classes``,
                ``ignore_label`` and (optionally) ``unseen_classes``.
            distributed (bool): gather and sum the confusion matrices of all processes;
                only the main process returns results.
            output_dir (str or None): where ``confusion_matrix.npy`` and
                ``sem_seg_evaluation.pth`` are written; nothing is written when None.
            save_confusion_matrix (bool): write ``confusion_matrix.npy`` to ``output_dir``.
        """
        meta = MetadataCatalog.get(dataset_name)
        class_names = meta.get("stuff_classes", None)
        if not class_names:
            raise ValueError(
                f"Dataset {dataset_name!r} has no 'stuff_classes' metadata; register it as a "
                f"semantic-segmentation dataset before evaluating it."
            )
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._save_confusion_matrix = save_confusion_matrix
        self._class_names = list(class_names)
        self._num_classes = len(self._class_names)
        self._ignore_label = int(meta.get("ignore_label", 255))
        self._unseen = list(meta.get("unseen_classes", []) or [])
        unknown = [u for u in self._unseen if u not in self._class_names]
        if unknown:
            raise ValueError(
                f"Dataset {dataset_name!r}: unseen_classes {unknown} are not in its "
                f"stuff_classes; fix the dataset registration."
            )
        # built on first use: only inputs without an in-memory label need the dataset dicts
        self._gt_files: dict[str, str] | None = None
        self.reset()

    def reset(self) -> None:
        self._conf = np.zeros((self._num_classes, self._num_classes), dtype=np.int64)

    @property
    def confusion_matrix(self) -> np.ndarray:
        """(K, K) int64 pixel counts ``conf[gt, pred]`` accumulated by this process so far."""
        return self._conf

    def _gt_file_for(self, file_name: str) -> str:
        if self._gt_files is None:
            self._gt_files = {
                d["file_name"]: d["sem_seg_file_name"]
                for d in DatasetCatalog.get(self._dataset_name)
                if "sem_seg_file_name" in d
            }
        if file_name not in self._gt_files:
            raise ValueError(
                f"Input {file_name!r} carries no 'sem_seg' of the prediction's size and is not "
                f"an image of dataset {self._dataset_name!r} with a 'sem_seg_file_name'; its "
                f"ground truth cannot be found."
            )
        return self._gt_files[file_name]

    def _ground_truth(self, inp: dict, pred_shape: tuple[int, int]) -> tuple[np.ndarray, str]:
        """Ground truth at the original resolution, and where it came from (for errors).

        Order: the input's own ``sem_seg_file_name``; its in-memory ``sem_seg`` when that has
        the prediction's (original) size; else the label file that the dataset dicts map its
        ``file_name`` to. An in-memory label of another size was transformed by the mapper
        (test-time resize, padding), so the file is the faithful ground truth then.
        """
        path = inp.get("sem_seg_file_name")
        if path is None and "sem_seg" in inp and tuple(inp["sem_seg"].shape) == pred_shape:
            gt = inp["sem_seg"]
            gt = gt.cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
            return gt.astype(np.int64), f"the in-memory 'sem_seg' of {inp.get('file_name')!r}"
        if path is None:
            path = self._gt_file_for(inp.get("file_name", "<no file_name>"))
        return load_sem_seg_gt(path), path

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Add one batch to the confusion matrix.

        Args:
            inputs (list[dict]): model inputs; each has ``"file_name"`` and, optionally,
                ``"sem_seg"`` ((H, W) labels) or ``"sem_seg_file_name"``.
            outputs (list[dict]): model outputs; ``"sem_seg"`` is a (K, H, W) score tensor at
                the original image size over the dataset's K ``stuff_classes``.
        """
        k = self._num_classes
        for inp, out in zip(inputs, outputs):
            if "sem_seg" not in out:  # a panoptic- or instance-only test task: not ours
                continue
            scores = out["sem_seg"]
            if scores.dim() != 3 or scores.shape[0] != k:
                raise ValueError(
                    f"The model returned 'sem_seg' scores of shape {tuple(scores.shape)} for "
                    f"{inp.get('file_name')!r}, but dataset {self._dataset_name!r} has {k} "
                    f"classes: the model must be evaluated with the dataset's vocabulary "
                    f"(leave MODEL.OVSEG.TEST_VOCABULARY empty)."
                )
            vocab = inp.get("vocabulary")
            if vocab is not None and list(vocab) != self._class_names:
                raise ValueError(
                    f"Input {inp.get('file_name')!r} carries a vocabulary that differs from "
                    f"the stuff_classes of {self._dataset_name!r}; scores over other names "
                    f"cannot be scored against its labels. Evaluate with the dataset's "
                    f"vocabulary (leave MODEL.OVSEG.TEST_VOCABULARY empty)."
                )
            pred = scores.argmax(dim=0).cpu().numpy().astype(np.int64)
            gt, source = self._ground_truth(inp, tuple(pred.shape))
            if gt.shape != pred.shape:
                raise ValueError(
                    f"Prediction of shape {pred.shape} does not match the ground truth of "
                    f"shape {gt.shape} from {source}; the model must answer at the original "
                    f"image size (inputs' 'height'/'width')."
                )
            valid = gt != self._ignore_label
            gt_valid = gt[valid]
            bad = (gt_valid < 0) | (gt_valid >= k)
            if bad.any():
                raise ValueError(
                    f"Ground truth from {source} holds labels {np.unique(gt_valid[bad])[:10]} "
                    f"outside [0, {k}) that are not ignore_label={self._ignore_label}."
                )
            self._conf += np.bincount(k * gt_valid + pred[valid], minlength=k * k).reshape(k, k)

    def evaluate(self) -> OrderedDict[str, dict[str, float]] | None:
        """Gather the confusion matrices, compute and log the metrics, save the artefacts.

        Returns:
            OrderedDict: ``{"sem_seg": metrics}`` on the main process (empty when no pixel
            was evaluated); None on the other processes when distributed.
        """
        conf = self._conf
        if self._distributed:
            comm.synchronize()
            gathered = comm.all_gather(self._conf)
            if not comm.is_main_process():
                return None
            conf = np.sum(gathered, axis=0)

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            if self._save_confusion_matrix:
                path = os.path.join(self._output_dir, "confusion_matrix.npy")
                atomic_write(path, lambda f: np.save(f, conf), fsync=False)
        if conf.sum() == 0:
            logger.warning(
                f"[OpenVocabSemSegEvaluator] No valid pixel evaluated on "
                f"{self._dataset_name!r}; returning no metrics."
            )
            return OrderedDict()

        res = segmentation_metrics(conf, self._class_names, unseen=self._unseen)
        self._log_tables(res)
        if self._output_dir:
            path = os.path.join(self._output_dir, "sem_seg_evaluation.pth")
            atomic_write(path, lambda f: torch.save(res, f), fsync=False)
        return OrderedDict({"sem_seg": res})

    def _log_tables(self, res: dict[str, float]) -> None:
        rows = []
        for name in self._class_names:
            split = "unseen" if name in self._unseen else "seen"
            iou = res.get(f"IoU-{name}", float("nan"))
            acc = res.get(f"ACC-{name}", float("nan"))
            rows.append([name, split, iou, acc])
        headers = ["class", "split", "IoU", "ACC"]
        if not self._unseen:
            rows = [[r[0], r[2], r[3]] for r in rows]
            headers = ["class", "IoU", "ACC"]
        table = tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".2f", numalign="left")
        logger.info(f"Per-class results on {self._dataset_name} (nan: class absent):\n{table}")
        summary = {k: v for k, v in res.items() if not k.startswith(("IoU-", "ACC-"))}
        # detectron2's print_csv_format skips keys containing '-', so mIoU-seen/unseen would
        # not reach the copypaste lines: log the split summary here as well.
        logger.info(f"Summary on {self._dataset_name}:\n" + create_small_table(summary))
