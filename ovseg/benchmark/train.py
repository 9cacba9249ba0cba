"""Training throughput of any ovseg config.

:func:`benchmark_training` builds the model, optimizer and training data the way
:class:`ovseg.engine.Trainer` does (its ``build_model``, ``build_optimizer`` and
``build_train_loader``; detectron2's ``SimpleTrainer`` step, or ovseg's ``AMPTrainer`` when
SOLVER.AMP is on), runs ``warmup`` untimed iterations, then times ``iters`` more. It reports
iterations/s, images/s, peak memory, the share of the step spent waiting for data, parameter
counts, the FLOPs of one iteration and the model-FLOPs utilisation (MFU). Only the step runs:
no checkpoint is loaded and no hook (LR schedule, evaluation, checkpointing) is called.

The data are the config's training loader (``data="loader"``: the dataset must be on disk),
or one synthetic batch fed over and over (``data="synthetic"``,
:mod:`ovseg.benchmark.synthetic`: random images and label maps of a few shapes over the
training vocabulary, plus the mask targets, boxes and pseudo instances the config's mapper
gives; only the dataset's registered metadata is needed, and waiting for data costs
nothing). A model that draws a task per batch (FreeSeg's ``train_tasks``) gets its last one
(panoptic for all-task: every segment a target) on every input, so the timed steps and the
FLOPs are of one task. Students that read more than the mapper's outputs (MaskCLIP+ with the
teacher in the loop reads the original image file) need the loader.

FLOPs: :func:`ovseg.benchmark.flop_counter` around one real forward and one real training
step (forward, backward, optimizer step) on the same batch; the backward is their
difference. It is measured, not a "3x forward" rule: a frozen CLIP tower's backward computes
activation gradients only (no weight gradients) and costs about 1x its forward, not 2x.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import tempfile
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import EventStorage

from .config import benchmark_config
from .flops import flop_counter, peak_tflops_for
from .shares import step_shares
from .syncs import HostSyncCounter, count_cuda_syncs, paused_during
from .synthetic import synthetic_batch, synthetic_labels, synthetic_side
from .timing import peak_memory, synchronize

__all__ = [
    "DATA_SOURCES",
    "PRECISIONS",
    "benchmark_training",
    "freeze_modules",
    "synthetic_batch",
    "synthetic_side",
    "training_config",
]

DATA_SOURCES = ("loader", "synthetic")
PRECISIONS = ("fp32", "bf16", "fp16")
FLOPS_CONVENTION = (
    "FlopCounterMode (matmul/conv/attention, 2 per multiply-add) around one real forward and "
    "one real training step; backward = step - forward; element-wise ops and the optimizer "
    "update not counted"
)


def training_config(
    config_file: str,
    opts: Sequence[str] = (),
    *,
    device: str,
    batch: Optional[int] = None,
    size: Optional[int] = None,
    precision: Optional[str] = None,
    pretrained: str = "",
    cache_dir: str = "",
) -> CfgNode:
    """The training config to benchmark: a config file, the benchmark's settings, ``opts``.

    Args:
        config_file (str): any ovseg training config.
        opts: KEY VALUE overrides, applied last.
        device (str): "cpu" or "cuda[:N]" (MODEL.DEVICE).
        batch (int, optional): SOLVER.IMS_PER_BATCH; default the config's.
        size (int, optional): train on ``size`` x ``size`` crops (INPUT.CROP, absolute, and
            INPUT.SIZE_DIVISIBILITY); default the config's input pipeline.
        precision (str, optional): "fp32", or AMP autocast in "bf16"/"fp16"; default the
            config's SOLVER.AMP.
        pretrained (str): MODEL.CLIP.PRETRAINED; "" = random CLIP weights.
        cache_dir (str): MODEL.CLIP.CACHE_DIR; "" = a temporary folder with random weights.

    Returns:
        CfgNode: the merged config.
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    for name, value in (("batch", batch), ("size", size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    settings: List[str] = []
    if batch is not None:
        settings += ["SOLVER.IMS_PER_BATCH", str(batch)]
    if size is not None:
        settings += [
            "INPUT.CROP.ENABLED", "True",
            "INPUT.CROP.TYPE", "absolute",
            "INPUT.CROP.SIZE", f"({size}, {size})",
            "INPUT.SIZE_DIVISIBILITY", str(size),  # pads smaller images to the crop
        ]  # fmt: skip
    if precision is not None:
        settings += ["SOLVER.AMP.ENABLED", str(precision != "fp32")]
        if precision != "fp32":
            settings += ["SOLVER.AMP.DTYPE", precision]
    cfg = benchmark_config(
        config_file,
        opts,
        device=device,
        pretrained=pretrained,
        cache_dir=cache_dir,
        settings=settings,
    )
    if not cfg.DATASETS.TRAIN:
        raise ValueError(
            f"{config_file} has no DATASETS.TRAIN: the training data and vocabulary come from "
            "the training dataset; name one with DATASETS.TRAIN \"('NAME',)\""
        )
    return cfg


class _Batches:
    """The trainer's data: the loader's batches with the last one kept, or, once ``repeat``
    is set, that batch over and over (so FLOPs are counted on one batch)."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.last: Any = None
        self.repeat: Any = None

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.loader)
        while True:
            if self.repeat is not None:
                yield self.repeat
                continue
            try:
                self.last = next(iterator)
            except StopIteration:
                return
            yield self.last


def freeze_modules(model: torch.nn.Module, names: Sequence[str]) -> None:
    """Stop the gradients of the named submodules, as loading them from a stage's checkpoint
    does (FreeSeg's ``prompt``: the prompt stage's tokens, whose text is then cached).

    Raises:
        ValueError: ``model`` has no submodule of a name.
    """
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise ValueError(
                f"{type(model).__name__} has no submodule {name!r} to freeze; its top-level "
                f"ones are {[n for n, _ in model.named_children()]}"
            )
        modules[name].requires_grad_(False)
        if hasattr(modules[name], "clear_cache"):
            modules[name].clear_cache()


def _synthetic(cfg: CfgNode, model: torch.nn.Module) -> Tuple[List[dict], int]:
    """The synthetic batch and its side."""
    side = synthetic_side(cfg)
    patch = getattr(getattr(model, "backbone", None), "size_divisibility", 0)
    if patch and side % patch:
        raise ValueError(
            f"--size {side} is not a multiple of the patch size {patch} (the backbone's "
            f"size_divisibility, {cfg.MODEL.CLIP.MODEL_NAME}); try "
            f"{max(patch, side // patch * patch)}"
        )
    labels = synthetic_labels(cfg)
    tasks = getattr(model, "train_tasks", ())
    from ..engine.trainer import per_forward_batch

    # one forward's images: a step runs SOLVER.ACCUMULATE_STEPS of them, IMS_PER_BATCH in all
    images = per_forward_batch(cfg).SOLVER.IMS_PER_BATCH
    batch = synthetic_batch(
        images, side, labels.names, labels.label_ids, labels.ignore,
        targets=labels.targets, task=tasks[-1] if tasks else "",
        pseudo_vocabulary=labels.pseudo_vocabulary,
    )  # fmt: skip
    return batch, side


def _build(
    cfg: CfgNode, data: str, frozen: Sequence[str] = ()
) -> Tuple[torch.nn.Module, SimpleTrainer, _Batches, int]:
    """Model, training step and data as ovseg's Trainer builds them; the synthetic side."""
    from ..engine import Trainer

    model = Trainer.build_model(cfg)
    freeze_modules(model, frozen)
    try:
        optimizer = Trainer.build_optimizer(cfg, model)
    except ValueError as e:
        raise ValueError(
            f"{cfg.MODEL.META_ARCHITECTURE} has nothing to train ({e}); time its inference "
            "with the teacher or pseudo benchmark"
        ) from e
    side = 0
    if data == "synthetic":
        batch, side = _synthetic(cfg, model)
        loader: Iterable[Any] = itertools.repeat(batch)
    else:
        loader = Trainer.build_train_loader(cfg)
    batches = _Batches(loader)
    return model, Trainer.build_step(cfg, model, batches, optimizer), batches, side


def _autocast(trainer: SimpleTrainer):
    if hasattr(trainer, "dtype"):  # AMPTrainer
        return torch.autocast(trainer.device_type, dtype=trainer.dtype)
    return contextlib.nullcontext()


def _count_syncs(trainer: SimpleTrainer, device: torch.device) -> Dict[str, int]:
    """Host-synchronising ops of one training step (metrics read-back excluded when the
    step defers it; on CUDA also torch's own synchronisation warnings)."""
    if device.type == "cuda":
        return count_cuda_syncs(trainer.run_step)
    counter = HostSyncCounter()
    paused_during(counter, trainer.optimizer)
    try:
        with counter:
            trainer.run_step()
    finally:
        del trainer.optimizer.step
    return {"dispatch": counter.total, **counter.counts}


def _run(
    trainer: SimpleTrainer,
    batches: _Batches,
    device: torch.device,
    iters: int,
    warmup: int,
    shares_steps: int = 0,
):
    """Time the steps back to back (the device synchronised before the first timed step and
    after the last, as a training run queues them), then count the FLOPs of one forward and
    one step on the last batch, the host syncs of a step and, with ``shares_steps``, the
    shares of its parts.

    Returns:
        dict: step_s (the mean timed step, per step), data_s (per timed step), losses, peak
        memory, forward and step FLOPs, syncs, shares.
    """
    with EventStorage(0) as storage:
        for i in range(warmup + iters):
            if i == warmup:
                synchronize(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
            storage.iter = i
            trainer.run_step()
        synchronize(device)
        step_s: List[float] = [(time.perf_counter() - start) / iters] * iters
        if hasattr(trainer, "flush_metrics"):
            trainer.flush_metrics()
        memory, memory_kind = peak_memory(device)
        # the allocator's segments, a CUDA graph's private pool among them (its blocks are not
        # "allocated" between replays: the allocated peak of a CUDA-graph step leaves it out)
        reserved = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None
        data_s = [v for v, it in storage.history("data_time").values() if it >= warmup]
        losses = [v for v, _ in storage.history("total_loss").values()]
        # counted after the timing (text embeddings are memoised by then), on one batch
        batches.repeat = batches.last
        with flop_counter() as counter, _autocast(trainer):
            trainer.model(batches.last)
        # a step's forwards: SOLVER.ACCUMULATE_STEPS of this batch
        forward = counter.get_total_flops() * getattr(trainer, "accumulate_steps", 1)
        storage.iter = warmup + iters
        with flop_counter() as counter:
            trainer.run_step()
        step = counter.get_total_flops()
        # a step that does not read the metrics back (those every SOLVER.METRICS_PERIOD)
        storage.iter = (warmup + iters + 1) // 1000 * 1000 + 1000
        syncs = _count_syncs(trainer, device)
        storage.iter += 1
        shares = step_shares(trainer, device, steps=shares_steps) if shares_steps else {}
    return {
        "syncs": syncs, "shares": shares,
        "step_s": step_s, "data_s": data_s, "losses": losses, "memory": memory,
        "memory_kind": memory_kind, "reserved": reserved,
        "flops_forward": forward, "flops_step": step,
    }  # fmt: skip


def _step_parts(cfg: CfgNode, run: Dict[str, Any]) -> Dict[str, Any]:
    """The host syncs of a step and the shares of its parts."""
    return {
        "metrics_period": cfg.SOLVER.METRICS_PERIOD,
        "host_syncs_per_step": run["syncs"],
        **run["shares"],
    }


def _peak(device: torch.device, precision: str, peak_tflops: Optional[float]):
    """(device name, peak TFLOP/s or None, where the peak came from or None)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if peak_tflops is not None:
        return name, peak_tflops, "--peak-tflops"
    if device.type == "cuda":
        return name, peak_tflops_for(name, precision), "table by device name"
    return name, None, None


def benchmark_training(
    cfg: CfgNode,
    *,
    iters: int,
    warmup: int,
    data: str = "loader",
    peak_tflops: Optional[float] = None,
    seed: int = 0,
    shares_steps: int = 0,
    frozen: Sequence[str] = (),
) -> Dict[str, Any]:
    """Time ``iters`` training iterations of a config after ``warmup`` untimed ones.

    Args:
        cfg (CfgNode): e.g. from :func:`training_config`.
        iters (int): timed iterations, >= 1.
        warmup (int): untimed iterations first, >= 0.
        data (str): "loader" (the config's training loader) or "synthetic" (one random
            batch of :func:`synthetic_side` images, repeated).
        peak_tflops (float, optional): the device's peak TFLOP/s for MFU; default a table by
            CUDA device name (none on the CPU).
        seed (int): torch seed before the model is built.
        shares_steps (int): extra instrumented steps for the frozen-forward and optimizer
            shares (:func:`ovseg.benchmark.shares.step_shares`); 0 = none.
        frozen: submodules frozen after the build (:func:`freeze_modules`).

    Returns:
        dict: the results, JSON-serialisable (see the module docstring for the FLOPs).
    """
    if data not in DATA_SOURCES:
        raise ValueError(f"data {data!r} is not one of {list(DATA_SOURCES)}")
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    device = torch.device(cfg.MODEL.DEVICE)
    precision = cfg.SOLVER.AMP.DTYPE if cfg.SOLVER.AMP.ENABLED else "fp32"
    with tempfile.TemporaryDirectory() as tmp:
        if not cfg.MODEL.CLIP.PRETRAINED and not cfg.MODEL.CLIP.CACHE_DIR:
            # random weights are worth no cache: text embeddings go to a throw-away folder
            cfg = cfg.clone()
            cfg.MODEL.CLIP.CACHE_DIR = tmp
        torch.manual_seed(seed)
        model, trainer, batches, side = _build(cfg, data, frozen)
        run = _run(trainer, batches, device, iters, warmup, shares_steps)
    first = batches.last[0]
    s_per_iter = sum(run["step_s"]) / len(run["step_s"])
    it_per_s = 1.0 / s_per_iter
    device_name, peak, peak_source = _peak(device, precision, peak_tflops)
    achieved = run["flops_step"] * it_per_s / 1e12
    vocabulary = first.get("vocabulary")
    return {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "data": data, "device": str(device), "device_name": device_name,
        "precision": precision, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "batch": cfg.SOLVER.IMS_PER_BATCH, "accumulate_steps": cfg.SOLVER.ACCUMULATE_STEPS,
        "size": side or None, "input_shape": list(first["image"].shape[-2:]),
        "iters": iters, "warmup": warmup, "it_per_s": it_per_s,
        "images_per_s": cfg.SOLVER.IMS_PER_BATCH * it_per_s,
        "s_per_iter": s_per_iter,
        "s_per_iter_median": statistics.median(run["step_s"]),
        "data_s_per_iter": sum(run["data_s"]) / len(run["step_s"]),
        "data_share": sum(run["data_s"]) / sum(run["step_s"]),
        "peak_memory_gib": run["memory"],
        "peak_memory_kind": run["memory_kind"],
        "peak_reserved_gib": run["reserved"],
        "flops_forward": run["flops_forward"],
        "flops_backward": run["flops_step"] - run["flops_forward"],
        "flops_per_iter": run["flops_step"],
        "flops_convention": FLOPS_CONVENTION, "tflops_achieved": achieved,
        "peak_tflops": peak, "peak_tflops_source": peak_source,
        "mfu": achieved / peak if peak else None,
        "learnable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "optimizer": type(trainer.optimizer).__name__,
        "vocabulary_size": len(vocabulary) if vocabulary is not None else None,
        "task": first.get("task"),
        "frozen": list(frozen),
        "loss_first": run["losses"][0],
        "loss_last": run["losses"][-1],
        **_step_parts(cfg, run),
    }  # fmt: skip
