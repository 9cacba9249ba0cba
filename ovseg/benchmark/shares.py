"""Where a training step's time goes: the frozen modules' forward, the optimizer, the data.

:func:`step_shares` runs a few extra steps with timers (device-synchronised) around the
forward of every frozen module (all parameters ``requires_grad=False``: the CLIP teacher's
towers, a ZegCLIP tower's blocks; only the outermost call counts) and around the optimizer
step, and reports each as a share of the instrumented step. The timers' synchronisation
makes these steps slower than the timed ones; the shares are of these steps.
:func:`mapper_rate` times the config's training mapper on synthetic files (an image and a
label PNG of the dataset's label ids), the work a loader process does per image.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from torch import nn

from detectron2.config import CfgNode

from .timing import synchronize

__all__ = ["frozen_modules", "mapper_rate", "step_shares", "synthetic_files"]


def frozen_modules(model: nn.Module) -> List[nn.Module]:
    """Modules that own parameters, all frozen (the outermost call of nested ones counts)."""
    out = []
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            out.append(m)
        elif not params:
            sub = list(m.parameters())
            if sub and not any(p.requires_grad for p in sub):
                out.append(m)
    return out


class _Clock:
    def __init__(self, device: torch.device) -> None:
        self.device, self.depth, self.start, self.total = device, 0, 0.0, 0.0

    def enter(self, *_: Any) -> None:
        if self.depth == 0:
            synchronize(self.device)
            self.start = time.perf_counter()
        self.depth += 1

    def leave(self, *_: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            synchronize(self.device)
            self.total += time.perf_counter() - self.start


def step_shares(trainer, device: torch.device, steps: int = 3) -> Dict[str, Any]:
    """Shares of the frozen modules' forward and the optimizer step in ``steps`` steps.

    Args:
        trainer: a detectron2 ``SimpleTrainer`` (or ovseg's AMPTrainer) inside an
            ``EventStorage``.
        device (torch.device): where the model runs.
        steps (int): instrumented steps.

    Returns:
        dict: "instrumented_step_s" (median), "frozen_forward_share", "optimizer_share",
        "frozen_modules" (how many were timed).
    """
    clock, opt_clock = _Clock(device), _Clock(device)
    handles = []
    frozen = frozen_modules(trainer.model)
    for m in frozen:
        handles.append(m.register_forward_pre_hook(clock.enter))
        handles.append(m.register_forward_hook(clock.leave))
    optimizer = trainer.optimizer
    step = optimizer.step

    def timed_step(*args, **kwargs):
        opt_clock.enter()
        try:
            return step(*args, **kwargs)
        finally:
            opt_clock.leave()

    optimizer.step = timed_step
    times, frozen_s, opt_s = [], [], []
    try:
        for _ in range(steps):
            clock.total = opt_clock.total = 0.0
            synchronize(device)
            start = time.perf_counter()
            trainer.run_step()
            synchronize(device)
            times.append(time.perf_counter() - start)
            frozen_s.append(clock.total)
            opt_s.append(opt_clock.total)
    finally:
        del optimizer.step
        for h in handles:
            h.remove()
    total = sum(times)
    return {
        "instrumented_step_s": statistics.median(times),
        "frozen_forward_share": sum(frozen_s) / total,
        "optimizer_share": sum(opt_s) / total,
        "frozen_modules": len(frozen),
    }


def _label_ids(mapper) -> List[int]:
    """Label values a file of the mapper's dataset may hold (the mapper refuses others)."""
    label_map = getattr(mapper, "label_map", None)
    if label_map is not None:
        ids = [int(k) for k in (label_map.keys() if hasattr(label_map, "keys") else range(256))]
    else:
        ids = list(range(len(getattr(mapper, "vocabulary", range(21)))))
    num_classes = getattr(mapper, "num_classes", None)
    return [i for i in ids if num_classes is None or i < num_classes]


def synthetic_files(mapper, folder: str, images: int, size=(375, 500)) -> List[Dict[str, Any]]:
    """Write ``images`` random JPEG images of ``size`` (H, W) with label PNGs of blocks of the
    mapper's label ids into ``folder``; their dataset dicts."""
    from PIL import Image

    ids = _label_ids(mapper)
    rng = np.random.default_rng(0)
    h, w = size
    dicts = []
    for i in range(images):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = np.full((h, w), ids[0], dtype=np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            label[y : y + h // 3, x : x + w // 3] = ids[int(rng.integers(len(ids)))] % 256
        Image.fromarray(img).save(Path(folder) / f"{i}.jpg", quality=90)
        Image.fromarray(label).save(Path(folder) / f"{i}.png")
        dicts.append(
            {"file_name": f"{folder}/{i}.jpg", "sem_seg_file_name": f"{folder}/{i}.png",
             "height": h, "width": w, "image_id": i}
        )  # fmt: skip
    return dicts


def mapper_rate(cfg: CfgNode, images: int = 8, size=(375, 500), repeats: int = 2) -> Dict[str, Any]:
    """Seconds per image of the config's training mapper on synthetic JPEG + PNG files.

    Args:
        cfg (CfgNode): a training config (its DATASETS.TRAIN[0] mapper).
        images (int): files written.
        size ((int, int)): their (height, width) (default: a typical VOC image).
        repeats (int): passes over the files (the first is not timed).

    Returns:
        dict: "mapper_s_per_image" (median over the timed passes), "loader_workers",
        "mapper_s_per_batch_per_worker": the loader's time per batch divided among
        DATALOADER.NUM_WORKERS processes (at least 1).
    """
    from ..data import build_dataset_mapper

    mapper = build_dataset_mapper(cfg, True, cfg.DATASETS.TRAIN[0])
    with tempfile.TemporaryDirectory() as tmp:
        dicts = synthetic_files(mapper, tmp, images, size)
        passes = []
        for r in range(repeats + 1):
            start = time.perf_counter()
            for d in dicts:
                mapper(d)
            if r:
                passes.append((time.perf_counter() - start) / images)
    per_image = statistics.median(passes)
    workers = max(int(cfg.DATALOADER.NUM_WORKERS), 1)
    return {
        "mapper_s_per_image": per_image,
        "loader_workers": workers,
        "mapper_s_per_batch_per_worker": per_image * cfg.SOLVER.IMS_PER_BATCH / workers,
    }
