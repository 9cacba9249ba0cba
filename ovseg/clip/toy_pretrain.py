"""Pretrain a tiny open_clip model on the toy world's captions (never its pixel labels).

The model is a standard open_clip architecture given by a JSON config (``configs/clip/
toy_*.json``); the result is an ordinary open_clip checkpoint that
``open_clip.create_model(name, pretrained=<path>)`` and ``build_clip_teacher`` load.
``tools/pretrain_toy_clip.py`` is the command line.

Data: the toy world's "pretrain" stream (images never written to disk by the world), one
caption per image. Half of each batch are hard negatives: the same layout, colours and
background with other shapes, captioned with the same words except the shapes, so only shape
tells a pair apart. Loss: symmetric InfoNCE where identical caption strings count as positives
of each other. AdamW, linear warm-up then cosine decay. Batches are a pure function of
(seed, step), so a resumed run continues exactly. Evaluation:
:func:`ovseg.clip.toy_evaluation.evaluate_toy_clip`.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import json
import logging
import math
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.datasets import toy_world
from ..utils.io import atomic_write, atomic_write_json, remove_temporaries
from .build import register_model_config
from .teacher import CLIPTeacher
from .toy_evaluation import evaluate_toy_clip, to_tensor
from .toy_pretrain_settings import RESUME_KEYS, ToyPretrainSettings

__all__ = [
    "ToyPretrainSettings",
    "build_open_clip",
    "clip_loss",
    "lr_at",
    "make_batch",
    "prefetch_batches",
    "pretrain",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data
def make_batch(
    seed: int, step: int, batch_size: int, size: int, hard_negatives: bool
) -> Tuple[np.ndarray, List[str]]:
    """The training batch of ``step``: uint8 images (B, H, W, 3) and B captions.

    With ``hard_negatives``, sample ``2j + 1`` is the twin of sample ``2j``: same layout,
    colours and caption template, different shapes.
    """
    images, captions = [], []
    per_step = batch_size // 2 if hard_negatives else batch_size
    for j in range(per_step):
        rng = toy_world.sample_rng(seed, "pretrain", step * per_step + j)
        scene = toy_world.sample_scene(rng, size)
        scenes = [scene, toy_world.twin_scene(scene, rng)] if hard_negatives else [scene]
        caption_rng = copy.deepcopy(rng)  # twins share template, colour choice and order
        for s in scenes:
            image, _ = toy_world.render_scene(s)  # the label is never used
            images.append(image)
            captions.append(toy_world.caption_scene(s, copy.deepcopy(caption_rng))[0])
    return np.stack(images), captions


def prefetch_batches(
    settings: ToyPretrainSettings, start: int, stop: int
) -> Iterator[Tuple[np.ndarray, List[str]]]:
    """Batches ``start..stop-1`` in order, drawn ahead of training.

    With ``workers == 0`` one background thread draws the next batch while the current one
    trains; with N > 0, N processes keep up to 2N batches in flight (the renderer is pure
    Python, so threads would share one core). A batch depends only on (seed, step), so the
    stream is the same either way.
    """
    make = functools.partial(
        make_batch,
        settings.seed,
        batch_size=settings.batch_size,
        size=settings.size,
        hard_negatives=settings.hard_negatives,
    )
    if settings.workers > 0:
        context = multiprocessing.get_context("spawn")
        pool: Any = ProcessPoolExecutor(settings.workers, mp_context=context)
        depth = 2 * settings.workers
    else:
        pool, depth = ThreadPoolExecutor(max_workers=1), 1
    with pool:
        pending = collections.deque(
            pool.submit(make, s) for s in range(start, min(stop, start + depth))
        )
        for step in range(start, stop):
            batch = pending.popleft().result()
            if step + depth < stop:
                pending.append(pool.submit(make, step + depth))
            yield batch


# --------------------------------------------------------------------------- model
def build_open_clip(model_config: str) -> Tuple[str, torch.nn.Module, Any]:
    """Register the JSON config with open_clip; return (name, fp32 CPU model, tokenizer)."""
    name = register_model_config(model_config)
    model = open_clip.create_model(name, pretrained=None, precision="fp32", device="cpu")
    return name, model, open_clip.get_tokenizer(name)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        # open_clip's rule: no decay for gains, biases, embeddings and the temperature
        skip = p.ndim < 2 or "embedding" in n or "logit_scale" in n
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0},
    ]


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))


def clip_loss(model, images: torch.Tensor, tokens: torch.Tensor, captions: Sequence[str]):
    """Symmetric InfoNCE; samples with identical captions are positives of each other.

    Args:
        model: an open_clip model (``encode_image``, ``encode_text``, ``logit_scale``).
        images (Tensor): (B, 3, H, W) normalised images.
        tokens (Tensor): (B, L) caption tokens.
        captions: the B caption strings.

    Returns:
        Tensor: the scalar loss.
    """
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp() * img @ txt.t()
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    key = torch.tensor([ids[c] for c in captions], device=logits.device)
    same = (key[:, None] == key[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss_i = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_t = torch.sum(-targets * F.log_softmax(logits.t(), dim=1), dim=1).mean()
    return (loss_i + loss_t) / 2


def _evaluate_model(model, tokenizer, settings: ToyPretrainSettings) -> Dict[str, Any]:
    """:func:`evaluate_toy_clip` on a frozen CPU copy of the model being trained."""
    teacher = CLIPTeacher(copy.deepcopy(model).cpu(), tokenizer)
    return evaluate_toy_clip(
        teacher, seed=settings.world_seed, num_images=settings.num_eval, size=settings.size
    )


# --------------------------------------------------------------------------- checkpoints
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def export(model: torch.nn.Module, path: Path, meta: Dict[str, Any]) -> None:
    """Save an open_clip checkpoint: ``{"state_dict": fp16 weights, "ovseg_pretrain": meta}``.

    fp16 halves the file (the 49408-token embedding dominates); open_clip casts on load.
    """
    state = {
        k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()
    }
    _save({"state_dict": state, "ovseg_pretrain": meta}, path)


# --------------------------------------------------------------------------- training
@dataclasses.dataclass
class _Run:
    """The state of a pretraining run between steps."""

    settings: ToyPretrainSettings
    name: str
    model: torch.nn.Module
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    device: torch.device
    mean: torch.Tensor  # (1, 3, 1, 1) pixel mean in [0, 255]
    std: torch.Tensor
    work_dir: Path
    start: int = 0
    elapsed: float = 0.0  # training seconds over every call
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def last(self) -> Path:
        return self.work_dir / "last.pt"

    def save_last(self, step: int) -> None:
        _save(
            {
                "state_dict": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": step,
                "elapsed": self.elapsed,
                "history": self.history,
                "args": dataclasses.asdict(self.settings),
            },
            self.last,
        )


def _start(s: ToyPretrainSettings) -> _Run:
    """Build the model and optimizer; with ``resume``, load ``last.pt`` if it exists."""
    device = torch.device(s.device)
    name, model, tokenizer = build_open_clip(s.model_config)
    model.to(device)
    pp = open_clip.get_model_preprocess_cfg(model)
    optimizer = torch.optim.AdamW(
        _param_groups(model, s.weight_decay), lr=s.lr, betas=(0.9, 0.98), eps=1e-6
    )
    run = _Run(
        settings=s,
        name=name,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        device=device,
        mean=torch.tensor(pp["mean"], device=device).view(1, 3, 1, 1) * 255,
        std=torch.tensor(pp["std"], device=device).view(1, 3, 1, 1) * 255,
        work_dir=s.run_dir,
    )
    # what saves of last.pt and exports of the output killed midway left (28 MB and 5 MB
    # for the toy CLIP): never read, so removed here
    stale = [
        p
        for f in (run.last, Path(s.output))
        for p in remove_temporaries(f.parent, re.escape(f.name))
    ]
    if stale:
        logger.warning("Removed %d temporaries of killed saves: %s", len(stale), stale)
    if s.resume and run.last.is_file():
        state = torch.load(run.last, map_location=device, weights_only=True)
        given = dataclasses.asdict(s)
        mismatched = {
            k: (state["args"][k], given[k]) for k in RESUME_KEYS if state["args"][k] != given[k]
        }
        if mismatched:
            raise ValueError(
                f"--resume: {run.last} was trained with other settings {mismatched} "
                "(saved, given); use another --work-dir or the same settings"
            )
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        run.start, run.elapsed, run.history = state["step"], state["elapsed"], state["history"]
        logger.info("Resumed from %s at step %d", run.last, run.start)
    elif s.resume:
        logger.info("--resume: no %s yet, starting from step 0", run.last)
    return run


def _step(run: _Run, step: int, images: np.ndarray, captions: List[str]) -> Tuple[float, float]:
    """One optimizer step; returns (loss, learning rate)."""
    s = run.settings
    x = (to_tensor(images).to(run.device, non_blocking=True) - run.mean) / run.std
    lr = lr_at(step, s.lr, s.warmup, s.steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss = clip_loss(run.model, x, run.tokenizer(captions).to(run.device), captions)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    with torch.no_grad():  # CLIP's clamp: temperature at most 100
        run.model.logit_scale.clamp_(0, math.log(100))
    return loss.item(), lr  # item() also waits for the device, so `elapsed` is honest


def _train(run: _Run, stop: int, wall_start: float) -> int:
    """Train steps ``run.start..stop-1`` (fewer when ``max_seconds`` passes); evaluate and
    save on their periods. Returns the step reached."""
    s = run.settings
    run.model.train()
    batches = prefetch_batches(s, run.start, stop)
    bar = tqdm(
        range(run.start, stop),
        initial=run.start,
        total=s.steps,
        desc="pretrain",
        disable=s.no_progress,
        dynamic_ncols=True,
    )
    for step in bar:
        t0 = time.perf_counter()
        loss, lr = _step(run, step, *next(batches))
        run.elapsed += time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        done = step + 1
        if done % s.eval_period == 0 or done == s.steps:
            run.model.eval()
            metrics = {"step": done, "loss": loss, "train_seconds": round(run.elapsed, 1)}
            metrics.update(_evaluate_model(run.model, run.tokenizer, s))
            run.model.train()
            run.history.append(metrics)
            logger.info("step %d: %s", done, json.dumps(metrics))
        if done % s.checkpoint_period == 0 or done == s.steps:
            run.save_last(done)
        if s.max_seconds and done < stop and time.perf_counter() - wall_start > s.max_seconds:
            logger.info("--max-seconds %g reached after step %d", s.max_seconds, done)
            stop = done
            break
    bar.close()
    batches.close()  # shuts the data workers down
    return stop


def _finish(run: _Run, stop: int, command: str, wall_start: float) -> Dict[str, Any]:
    """Export the checkpoint, evaluate it as open_clip reloads it, write metrics.json."""
    s = run.settings
    run.model.eval()
    if run.history and run.history[-1]["step"] == stop:
        final = run.history[-1]
    else:
        final = _evaluate_model(run.model, run.tokenizer, s)
    meta = {
        "model_config": os.path.basename(s.model_config),
        "steps": stop,
        "schedule_steps": s.steps,
        "seed": s.seed,
        "train_seconds": round(run.elapsed, 1),
        "device": _device_name(run.device),
        "metrics": final,
        "command": command,
    }
    export(run.model, Path(s.output), meta)
    # measure what was shipped: the fp16 file as open_clip loads it
    reloaded = open_clip.create_model(run.name, pretrained=s.output, device="cpu")
    shipped = evaluate_toy_clip(
        CLIPTeacher(reloaded, run.tokenizer),
        seed=s.world_seed,
        num_images=s.num_eval,
        size=s.size,
    )
    logger.info(
        "Saved %s (%.1f s of training); reloaded: %s", s.output, run.elapsed, json.dumps(shipped)
    )
    wall = time.perf_counter() - wall_start
    logger.info("Wall time of this call: %.1f s", wall)
    record = {**meta, "shipped_metrics": shipped, "wall_seconds_last_call": round(wall, 1)}
    atomic_write_json(run.work_dir / "metrics.json", {**record, "history": run.history}, indent=1)
    return shipped


def pretrain(settings: ToyPretrainSettings, command: str = "") -> Dict[str, Any]:
    """Pretrain (or continue pretraining) a toy CLIP and export it.

    Args:
        settings (ToyPretrainSettings): the run.
        command (str): the command line recorded in the checkpoint (to retrain it).

    Returns:
        dict: the exported checkpoint's metrics as open_clip reloads it
        (:func:`evaluate_toy_clip`), or {} when the call stopped early without
        ``export_partial``.
    """
    settings.check()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    wall_start = time.perf_counter()
    run = _start(settings)
    s = settings
    stop = min(s.steps, run.start + s.stop_after) if s.stop_after else s.steps
    stop = _train(run, stop, wall_start)
    if stop < s.steps:
        run.save_last(stop)
        logger.info(
            "Stopped after step %d of %d; continue with --resume "
            "(the same weights come from --steps %d --stop-after %d)",
            stop,
            s.steps,
            s.steps,
            stop - run.start,
        )
        if not s.export_partial:
            return {}
    return _finish(run, stop, command, wall_start)
