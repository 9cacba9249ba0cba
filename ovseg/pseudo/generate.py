"""Label a dataset with a teacher meta-architecture and fill a :class:`PseudoLabelStore`;
open a store in every process at once (:func:`open_store`)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from detectron2.utils import comm

from .labels import score_kind_of, scores_to_labels
from .store import PseudoLabelStore, image_id_of

__all__ = ["all_ok", "generate_pseudo_labels", "open_store", "shard_dataset_dicts"]

logger = logging.getLogger(__name__)

_PROGRESS_BAR = {"desc": "pseudo-labels", "unit": "img", "dynamic_ncols": True}


def shard_dataset_dicts(
    dataset_dicts: Sequence[Mapping[str, Any]], rank: int = 0, world_size: int = 1
) -> List[Tuple[str, Mapping[str, Any]]]:
    """This process's share of a dataset: every ``world_size``-th image ordered by image id.

    Args:
        dataset_dicts: detectron2 dataset dicts.
        rank (int): this process's rank, in [0, world_size).
        world_size (int): number of processes.

    Returns:
        list[tuple[str, dict]]: (image_id, dataset dict) pairs, sorted by image id.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    keyed: Dict[str, Mapping[str, Any]] = {}
    for d in dataset_dicts:
        image_id = image_id_of(d)
        if image_id in keyed:
            raise ValueError(
                f"Two dataset dicts share image_id {image_id!r} ({keyed[image_id].get('file_name')}"
                f" and {d.get('file_name')}); the store needs one id per image"
            )
        keyed[image_id] = d
    ordered = sorted(keyed.items())
    return ordered[rank::world_size]


def _check_vocabulary(image_id: str, inputs: Mapping[str, Any], store: PseudoLabelStore) -> None:
    names = inputs.get("vocabulary")
    if names is None:
        return
    if tuple(n.strip() for n in names) != store.vocabulary:
        raise ValueError(
            f"{image_id}: the mapper asks the model for {len(names)} classes {list(names)[:6]}..., "
            f"but the store's vocabulary is {len(store.vocabulary)} classes "
            f"{list(store.vocabulary)[:6]}...; build the store from the mapper's vocabulary"
        )


def _scores(model: nn.Module, inputs: dict, store: PseudoLabelStore, image_id: str) -> Tensor:
    """The model's (K, H, W) scores of one mapped image, checked against the store."""
    _check_vocabulary(image_id, inputs, store)
    with torch.no_grad():
        scores = model([inputs])[0]["sem_seg"]
    expected = (len(store.vocabulary), inputs["height"], inputs["width"])
    if tuple(scores.shape) != expected:
        raise ValueError(
            f"{image_id}: the model returned sem_seg of shape {tuple(scores.shape)}; "
            f"expected (K, height, width) = {expected} (store vocabulary, original size)"
        )
    return scores


def _warn_if_probabilities(image_id: str, scores: Tensor) -> bool:
    """Warn, and return True, when scores taken as logits all lie in [0, 1]."""
    if not (0 <= scores.min() and scores.max() <= 1):
        return False
    logger.warning(
        f"{image_id}: every score lies in [0, 1], as probabilities do, but they are treated "
        "as logits (softmax again); if the model returns probabilities give it "
        "sem_seg_scores = 'probabilities' or pass --scores probabilities"
    )
    return True


def generate_pseudo_labels(
    model: nn.Module,
    dataset_dicts: Sequence[Mapping[str, Any]],
    mapper: Callable[[dict], dict],
    store: PseudoLabelStore,
    *,
    threshold: float,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    score_kind: str = "auto",
) -> Dict[str, int]:
    """Label this process's shard of a dataset, skipping images already in the store.

    Images whose stored files match their recorded digests are skipped; others are
    labelled (again). Each image is mapped (use a test-mode mapper: no augmentation, so
    labels align with the original image), run through ``model`` alone, turned into labels by
    :func:`scores_to_labels` and written to the store atomically. Killing the run loses at
    most the images being written; running it again finishes the rest, and the result is
    byte-identical to one uninterrupted run.

    Args:
        model (nn.Module): an ovseg meta-architecture; in eval mode it returns
            ``[{"sem_seg": Tensor (K, H, W)}]`` over the K names of ``inputs["vocabulary"]``
            at the original size. It is put in eval mode for the run.
        dataset_dicts: detectron2 dataset dicts; every process passes the same list.
        mapper: dataset dict -> model input (test mode).
        store (PseudoLabelStore): where labels go; its vocabulary must be the mapper's.
        threshold (float): confidence threshold; must equal the store's.
        rank (int): this process's rank.
        world_size (int): number of processes sharing the work.
        progress (bool): show a tqdm bar (rank 0 only).
        score_kind (str): "logits", "probabilities", or "auto" (the model's
            ``sem_seg_scores`` attribute, else "logits"); see :func:`scores_to_labels`.

    Returns:
        dict: {"total": images in this shard, "written": newly labelled, "skipped": already
        in the store}.
    """
    if abs(float(threshold) - store.threshold) > 1e-12:
        raise ValueError(
            f"threshold {threshold} differs from the store's {store.threshold} "
            f"({store.root}); use the store's threshold or another output folder"
        )
    kind = score_kind_of(model, score_kind)
    shard = shard_dataset_dicts(dataset_dicts, rank, world_size)
    # done = stored and matching the recorded digests; a corrupt or unrecorded one is re-made
    done = {image_id for image_id, _ in shard if store.is_valid(image_id)}
    bad = sum(store.has(image_id) and image_id not in done for image_id, _ in shard)
    logger.info(
        f"Pseudo-labels into {store.root}: rank {rank}/{world_size} has {len(shard)} images, "
        f"{len(done)} already done" + (f", {bad} stored but corrupt or unrecorded" if bad else "")
    )
    stats = {"total": len(shard), "written": 0, "skipped": 0}
    warned = False
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(shard), disable=not progress or rank != 0, **_PROGRESS_BAR)
    try:
        for image_id, dataset_dict in shard:
            if image_id in done:
                stats["skipped"] += 1
            else:
                scores = _scores(model, mapper(dict(dataset_dict)), store, image_id)
                if kind == "logits" and not warned:
                    warned = _warn_if_probabilities(image_id, scores)
                label, confidence = scores_to_labels(scores, threshold, store.ignore_value, kind)
                store.write(image_id, label, confidence)
                stats["written"] += 1
            bar.update(1)
            bar.set_postfix(skipped=stats["skipped"], refresh=False)
    finally:
        bar.close()
        model.train(was_training)
    logger.info(
        f"Rank {rank}: wrote {stats['written']} pseudo-labels, skipped {stats['skipped']} "
        "already in the store"
    )
    return stats


def all_ok(error: Optional[str], kind: type = RuntimeError) -> None:
    """Raise ``kind`` in every process when any process failed (so none waits at a barrier);
    a process that did not fail raises the first failure's text, marked ``peer_failed`` (a
    launcher reports the failed process's own error rather than such a copy)."""
    errors = [e for e in comm.all_gather(error) if e]
    if errors:
        raised = kind(errors[0] if error is None else error)
        raised.peer_failed = error is None
        if raised.peer_failed:  # the failed process ends first: torch's spawn reports it
            from ..compat import PEER_FAILURE_GRACE_S

            time.sleep(PEER_FAILURE_GRACE_S)
        raise raised


def open_store(output: str, manifest: dict, store_cls=PseudoLabelStore) -> PseudoLabelStore:
    """Create the store in ``output`` (main process), then open it in every process.

    Args:
        output (str): the store's folder.
        manifest (dict): the labeller's manifest; a store there must match its
            ``fingerprint`` and ``vocabulary``.
        store_cls: :class:`PseudoLabelStore` or ``InstancePseudoLabelStore``.

    Returns:
        the open store; a ``ValueError`` in every process when any could not open it.
    """
    store, error = None, None
    if comm.is_main_process():
        try:
            store = store_cls.create(output, manifest)
        except (ValueError, OSError) as e:
            error = str(e)
    all_ok(error, ValueError)  # a user's mistake (folder, other teacher), not a crash
    if store is None:
        expect = {"fingerprint": manifest["fingerprint"], "vocabulary": manifest["vocabulary"]}
        try:
            store = store_cls.open(output, expect=expect)
        except (ValueError, OSError) as e:
            # e.g. a randomly initialised teacher that differs between processes
            error = f"rank {comm.get_rank()}: {e}"
    all_ok(error, ValueError)  # a user's mistake (folder, other teacher), not a crash
    return store
