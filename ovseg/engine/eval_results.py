"""Where ``train_net.py --eval-only`` writes its results: never over an earlier evaluation's.

detectron2's evaluators write into ``OUTPUT_DIR/inference`` (``inference/<dataset>`` for each
of several test sets): ``sem_seg_evaluation.pth`` and ``confusion_matrix.npy``,
``coco_instances_results.json``, ``fewshot_evaluation.json``, the panoptic evaluator's files.
``--eval-only`` pointed at a training run's folder (its config's own OUTPUT_DIR, or
``--resume``) used to overwrite the run's final evaluation there, and a second evaluation with
other weights or test settings overwrote the first.

An ``--eval-only`` now writes into the first of ``inference``, ``inference_2``,
``inference_3``, ... that holds no results or holds this very evaluation's (the same weights
file, unchanged, and the same config: re-running it overwrites its own, equal results), and
says where; beside a training running in OUTPUT_DIR (whose evaluations write ``inference``
later) it starts at ``inference_2``. Each such folder records what produced it:
:data:`RECORD` (the weights file's path, size and modification time, the config's SHA-256)
and :data:`~.defaults.EVAL_CONFIG` (the config, as ``OUTPUT_DIR/config_eval.yaml`` holds the
latest evaluation's). A training run's own evaluations still write ``inference`` as
detectron2's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Dict, List, Tuple

from detectron2.config import CfgNode
from detectron2.utils import comm

from ..utils.io import TMP_PREFIX, atomic_write_json, atomic_write_text
from ..utils.locks import FolderInUseError, FolderLock
from .defaults import EVAL_CONFIG, saved_config

__all__ = ["RECORD", "eval_only_evaluators", "mark_results_done", "results_folder"]

logger = logging.getLogger(__name__)

RECORD = "evaluation.json"
_FOLDER = "inference"
# held by the evaluation writing a folder, from its choice to mark_results_done
CLAIM = ".evaluation.lock"
_CLAIMS: Dict[str, FolderLock] = {}


def evaluation_identity(cfg: CfgNode, weights: str) -> Dict[str, Any]:
    """What makes two evaluations the same: the weights file (path, size, modification time;
    "" for none) and the config (the text ``OUTPUT_DIR/config_eval.yaml`` holds)."""
    identity: Dict[str, Any] = {"weights": "", "config_sha256": ""}
    if weights and os.path.isfile(weights):
        st = os.stat(weights)
        identity.update(
            weights=os.path.abspath(weights),
            weights_size=st.st_size,
            weights_mtime_ns=st.st_mtime_ns,
        )
    elif weights:  # a URL: its name is all that is known before it is read
        identity["weights"] = weights
    identity["config_sha256"] = hashlib.sha256(saved_config(cfg).encode()).hexdigest()
    return identity


def _state(folder: str, identity: Dict[str, Any]) -> str:
    """ "free" (absent, or no results in it), "same" (this evaluation's: the record matches
    and no result was written after it, as a training run's evaluation into the folder would
    be) or "other"."""
    if not os.path.isdir(folder):
        return "free"
    record = os.path.join(folder, RECORD)
    stamp = None
    try:
        with open(record, encoding="utf-8") as f:
            if json.load(f) == identity:
                stamp = os.stat(record).st_mtime_ns
    except (OSError, ValueError):
        pass
    results = [
        os.path.join(root, n)
        for root, _, files in os.walk(folder)
        for n in files
        if n not in (RECORD, EVAL_CONFIG, CLAIM) and not n.startswith(TMP_PREFIX)
    ]
    if stamp is not None and all(os.stat(r).st_mtime_ns <= stamp for r in results):
        return "same"
    return "other" if results else "free"


def mark_results_done(folder: str, cfg: CfgNode, weights: str) -> None:
    """Write the folder's record again once its results are in (main process): a result
    written later (a training run evaluating into the folder) makes it another's."""
    if comm.is_main_process():
        atomic_write_json(os.path.join(folder, RECORD), evaluation_identity(cfg, weights))
        claim = _CLAIMS.pop(os.path.abspath(folder), None)
        if claim is not None:
            claim.release()


def _claim(folder: str) -> bool:
    """Whether this evaluation now holds ``folder`` (False: another one is writing it)."""
    lock = FolderLock(folder, "--eval-only evaluation", CLAIM)
    try:
        lock.acquire()
    except FolderInUseError:
        return False
    _CLAIMS[os.path.abspath(folder)] = lock
    return True


def _training_runs_in(output_dir: str) -> bool:
    """Whether another process's training holds ``output_dir`` now (its evaluations write
    ``inference``, over whatever an ``--eval-only`` put there meanwhile)."""
    from .checks import RUN_LOCK

    try:
        FolderLock(output_dir, "training", RUN_LOCK).refuse_if_held()
    except FolderInUseError:
        return True
    return False


def results_folder(cfg: CfgNode, weights: str) -> Tuple[str, str]:
    """The folder an ``--eval-only`` of ``weights`` with ``cfg`` writes its results into.

    The main process chooses, claims the folder (a lock another evaluation started at the same
    time skips, held until :func:`mark_results_done`) and writes its record (atomically,
    before any result); every process gets its choice.

    Returns:
        tuple[str, str]: the folder, and why it is not ``OUTPUT_DIR/inference`` ("" when it
        is, or when ``inference`` held this evaluation's results).
    """
    identity = evaluation_identity(cfg, weights)
    base = os.path.join(cfg.OUTPUT_DIR, _FOLDER)
    folder, n, training = "", 1, False
    if comm.is_main_process():
        # a training running in OUTPUT_DIR evaluates into inference/ later; a folder another
        # evaluation is writing right now holds no results yet, so it looks free: its claim
        # tells (two evaluations at once used to share inference/)
        training = _training_runs_in(cfg.OUTPUT_DIR)
        n = 2 if training else 1
        while True:
            folder = base if n == 1 else f"{base}_{n}"
            if _state(folder, identity) != "other" and _claim(folder):
                break
            n += 1
        atomic_write_json(os.path.join(folder, RECORD), identity)
        atomic_write_text(os.path.join(folder, EVAL_CONFIG), saved_config(cfg))
    folder, n, training = comm.all_gather((folder, n, training))[0]  # the main process's
    if n == 1:
        why = ""
    elif training:
        why = f"a training is running in {cfg.OUTPUT_DIR}: its own evaluations write {base}"
    else:
        why = (
            f"{base} holds an earlier evaluation of other weights or settings, the training "
            "run's own, which is kept, or one being written by another evaluation"
        )
    return folder, why


def eval_only_evaluators(trainer, cfg: CfgNode, weights: str) -> Tuple[List[Any], str]:
    """The evaluators of ``cfg.DATASETS.TEST`` for an ``--eval-only``, writing into
    :func:`results_folder` (``<folder>/<dataset>`` for each of several test sets).

    Args:
        trainer: the Trainer class (its ``build_evaluator``).
        cfg (CfgNode): the run's config.
        weights (str): the file the model was loaded from ("" for none).

    Returns:
        tuple[list, str]: the evaluators, one per test set, and the folder.
    """
    from ..evaluation.build import output_folder_for

    folder, why = results_folder(cfg, weights)
    logger.info(f"--eval-only: results go to {folder}" + (f" ({why})" if why else ""))
    evaluators = [
        trainer.build_evaluator(cfg, name, output_folder_for(cfg, name, folder))
        for name in cfg.DATASETS.TEST
    ]
    return evaluators, folder
