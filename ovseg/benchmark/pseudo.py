"""Pseudo-labelling throughput: images/s of :func:`ovseg.pseudo.generate_pseudo_labels`
(read, map, label, write label and confidence PNGs) into a fresh temporary store."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable, Dict, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from detectron2.config import CfgNode

__all__ = ["benchmark_pseudo_labelling", "store_rate_on_images", "time_pseudo_labelling"]


def time_pseudo_labelling(
    model: nn.Module,
    dataset_dicts: Sequence[Mapping[str, Any]],
    mapper: Callable[[dict], dict],
    manifest: Dict[str, Any],
    *,
    score_kind: str = "auto",
) -> float:
    """Seconds :func:`ovseg.pseudo.generate_pseudo_labels` takes to label ``dataset_dicts``
    into a fresh temporary store made from ``manifest``.

    Args:
        model (nn.Module): the labeller.
        dataset_dicts: the images to label.
        mapper: dataset dict -> model input (test mode).
        manifest (dict): from :func:`ovseg.pseudo.build_manifest`.
        score_kind (str): what the model's scores are (see ``generate_pseudo_labels``).

    Returns:
        float: wall seconds, CUDA synchronised at both ends.
    """
    from ..pseudo import PseudoLabelStore, generate_pseudo_labels
    from .timing import synchronize

    device = getattr(model, "device", None) or next(model.parameters()).device
    with tempfile.TemporaryDirectory() as tmp:
        store = PseudoLabelStore.create(os.path.join(tmp, "store"), manifest)
        synchronize(device)
        start = time.perf_counter()
        generate_pseudo_labels(
            model,
            dataset_dicts,
            mapper,
            store,
            threshold=manifest["threshold"],
            progress=False,
            score_kind=score_kind,
        )
        synchronize(device)
        return time.perf_counter() - start


def store_rate_on_images(
    model: nn.Module, images: torch.Tensor, names: Sequence[str], iters: int
) -> float:
    """Images/s of pseudo-labelling JPEGs of the given images into a store.

    Args:
        model (nn.Module): the labeller (e.g. MaskCLIP), over ``names``.
        images (Tensor): (B, 3, H, W) uint8; written ``max(iters, 1)`` times over as JPEGs.
        names: the labelling vocabulary.
        iters (int): how many times the batch is labelled.

    Returns:
        float: images/s (read JPEG, map, label, write 2 PNGs).
    """
    from PIL import Image

    from ..data.dataset_mappers.semantic import SemanticDatasetMapper
    from ..pseudo import build_manifest

    mapper = SemanticDatasetMapper.unresized(names)
    with tempfile.TemporaryDirectory() as tmp:
        dicts = []
        for i in range(max(iters, 1) * images.shape[0]):
            path = os.path.join(tmp, f"{i:06d}.jpg")
            array = images[i % images.shape[0]].permute(1, 2, 0).cpu().numpy()
            Image.fromarray(array.astype(np.uint8)).save(path, quality=95)
            dicts.append({"file_name": path, "image_id": f"{i:06d}"})
        manifest = build_manifest(
            fingerprint="benchmark", teacher={}, vocabulary=names, threshold=0.0, dataset="bench"
        )
        return len(dicts) / time_pseudo_labelling(model, dicts, mapper, manifest)


def benchmark_pseudo_labelling(
    cfg: CfgNode,
    *,
    dataset: str = "",
    limit: int = 0,
    warmup: int = 1,
    threshold: float = 0.0,
    scores: str = "auto",
) -> Dict[str, Any]:
    """Pseudo-labelling throughput of a config's teacher over a registered dataset, the way
    ``tools/generate_pseudo_labels.py`` labels it (one process).

    Args:
        cfg (CfgNode): the teacher's config (e.g. a MaskCLIP config).
        dataset (str): a registered dataset; default DATASETS.TRAIN[0].
        limit (int): label the first ``limit`` images (0 = all).
        warmup (int): images labelled into a throw-away store first.
        threshold (float): the store's confidence threshold.
        scores (str): "auto", "logits" or "probabilities".

    Returns:
        dict: images, seconds, images/s and the labeller's settings.
    """
    from ..engine.pseudo_labelling import build_labeller, labeller_manifest

    if limit < 0 or warmup < 0:
        raise ValueError(f"need limit >= 0 and warmup >= 0, got limit={limit}, warmup={warmup}")
    labeller = build_labeller(cfg, dataset, scores)
    manifest = labeller_manifest(cfg, labeller, threshold)
    dicts = labeller.dataset_dicts[:limit] if limit else labeller.dataset_dicts
    if not dicts:
        raise ValueError(f"dataset {labeller.dataset!r} holds no images to label")
    run = dict(score_kind=labeller.score_kind)
    if warmup:
        time_pseudo_labelling(labeller.model, dicts[:warmup], labeller.mapper, manifest, **run)
    seconds = time_pseudo_labelling(labeller.model, dicts, labeller.mapper, manifest, **run)
    return {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "dataset": labeller.dataset,
        "device": cfg.MODEL.DEVICE,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "score_kind": labeller.score_kind,
        "threshold": threshold,
        "vocabulary_size": len(labeller.vocabulary),
        "images": len(dicts),
        "warmup": warmup,
        "seconds": seconds,
        "images_per_s": len(dicts) / seconds,
        "s_per_image": seconds / len(dicts),
    }
