"""Where a training step's time goes: the frozen modules' forward, the optimizer, the data.

:func:`step_shares` runs a few extra steps with timers (device-synchronised) around the
forward of every frozen module (all parameters ``requires_grad=False``: the CLIP teacher's
towers, a ZegCLIP tower's blocks; only the outermost call counts) and around the optimizer
step, and reports each as a share of the instrumented step. The timers' synchronisation
makes these steps slower than the timed ones; the shares are of these steps.
:func:`mapper_rate` times the config's training mapper on synthetic files (an image and a
label PNG of the dataset's label ids, plus the panoptic PNG, instance polygons or pseudo
instances its mapper reads), the work a loader process does per image.
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

__all__ = ["compiled_modules", "frozen_modules", "mapper_label_ids", "mapper_rate", "step_shares"]


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


def compiled_modules(model: nn.Module) -> set:
    """``id`` of every module inside a ``Module.compile``-d one (MODEL.COMPILE's children):
    forward hooks added after the compilation do not run there, or recompile the graph."""
    inside = set()
    for m in model.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            inside.update(id(sub) for sub in m.modules())
    return inside


def step_shares(trainer, device: torch.device, steps: int = 3) -> Dict[str, Any]:
    """Shares of the frozen modules' forward and the optimizer step in ``steps`` steps.
    When a frozen module runs inside a compiled one (MODEL.COMPILE), its forward has no
    share of its own: "frozen_forward_share" is None and "frozen_forward_note" says why.

    Args:
        trainer: a detectron2 ``SimpleTrainer`` (or ovseg's AMPTrainer) inside an
            ``EventStorage``.
        device (torch.device): where the model runs.
        steps (int): instrumented steps.

    Returns:
        dict: "instrumented_step_s" (median), "frozen_forward_share", "optimizer_share",
        "frozen_modules" (how many were timed), "frozen_forward_note".
    """
    clock, opt_clock = _Clock(device), _Clock(device)
    handles = []
    frozen = frozen_modules(trainer.model)
    compiled = compiled_modules(trainer.model)
    hidden = sum(id(m) in compiled for m in frozen)
    if hidden:  # timing the others alone would pass a part for the whole
        frozen = []
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
        "frozen_forward_share": None if hidden else sum(frozen_s) / total,
        "optimizer_share": sum(opt_s) / total,
        "frozen_modules": len(frozen),
        "frozen_forward_note": (
            f"{hidden} frozen modules run inside a compiled module (MODEL.COMPILE), where "
            "forward hooks do not time them: no share (the eager row's applies)"
            if hidden
            else ""
        ),
    }


def mapper_label_ids(mapper) -> List[int]:
    """Label values a file of the mapper's dataset may hold (the mapper refuses others),
    those it keeps first choice."""
    label_map = getattr(mapper, "label_map", None)
    if label_map is not None:
        ids = [int(k) for k in (label_map.keys() if hasattr(label_map, "keys") else range(256))]
    else:
        ids = list(range(len(getattr(mapper, "vocabulary", range(21)))))
    num_classes = getattr(mapper, "num_classes", None)
    ids = [i for i in ids if num_classes is None or i < num_classes]
    if isinstance(label_map, np.ndarray):  # a table: ids it maps to a class, if any
        ignore = getattr(mapper, "ignore_label", 255)
        ids = [i for i in ids if i < len(label_map) and int(label_map[i]) != ignore] or ids
    return ids


def mapper_rate(cfg: CfgNode, images: int = 8, size=(375, 500), repeats: int = 2) -> Dict[str, Any]:
    """Seconds per image of the config's training mapper on synthetic files in its dataset's
    layout (:func:`ovseg.benchmark.mapper_files.synthetic_files`: JPEG + label PNG, + a
    panoptic PNG, or instance polygons and an XPM pseudo-label store).

    Args:
        cfg (CfgNode): a training config (its DATASETS.TRAIN[0] mapper).
        images (int): files written.
        size ((int, int)): their (height, width) (default: a typical VOC image).
        repeats (int): passes over the files (the first is not timed).

    Returns:
        dict: "mapper_s_per_image" (median over the timed passes), "loader_workers",
        "mapper_s_per_batch_per_worker": the loader's time per batch divided among
        DATALOADER.NUM_WORKERS processes (at least 1), "mapper_targets".
    """
    from ..data import build_dataset_mapper
    from .mapper_files import synthetic_files, write_instance_store
    from .synthetic import MAPPER_TARGETS

    kind = MAPPER_TARGETS.get(cfg.INPUT.DATASET_MAPPER_NAME, "")
    with tempfile.TemporaryDirectory() as tmp:
        plain = cfg.clone()
        plain.defrost()
        plain.DATASETS.PSEUDO_LABELS = ""  # a label-PNG store is not read by the mapper
        mapper = build_dataset_mapper(plain, True, cfg.DATASETS.TRAIN[0])
        dicts = synthetic_files(tmp, kind, images, size, mapper_label_ids(mapper))
        if kind == "xpm":  # XPM's mapper opens the store its records come from
            dicts = write_instance_store(str(Path(tmp) / "store"), cfg, dicts)
            plain.DATASETS.PSEUDO_LABELS = str(Path(tmp) / "store")
            mapper = build_dataset_mapper(plain, True, cfg.DATASETS.TRAIN[0])
        passes = []
        for r in range(repeats + 1):
            start = time.perf_counter()
            for d in dicts:
                mapper(dict(d))
            if r:
                passes.append((time.perf_counter() - start) / images)
    per_image = statistics.median(passes)
    workers = max(int(cfg.DATALOADER.NUM_WORKERS), 1)
    return {
        "mapper_s_per_image": per_image,
        "mapper_targets": kind or "sem_seg",
        "loader_workers": workers,
        "mapper_s_per_batch_per_worker": per_image * cfg.SOLVER.IMS_PER_BATCH / workers,
    }
