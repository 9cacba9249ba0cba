#!/usr/bin/env python
"""Pretrain a tiny open_clip model on the toy world's captions (never its pixel labels).

The model is a standard open_clip architecture given by a JSON config (``configs/clip/
toy_*.json``); the result is an ordinary open_clip checkpoint that
``open_clip.create_model(name, pretrained=<path>)`` and ``build_clip_teacher`` load.

Data: the toy world's "pretrain" stream (images never written to disk by the world), one
caption per image. Half of each batch are hard negatives: the same layout, colours and
background with other shapes, captioned with the same words except the shapes, so only shape
tells a pair apart. Loss: symmetric InfoNCE where identical caption strings count as positives
of each other. AdamW, linear warm-up then cosine decay. Batches are a pure function of
(seed, step), so ``--resume`` continues exactly.

Evaluation (through :class:`ovseg.clip.CLIPTeacher`, the code path every method uses) on the
first ``--num-eval`` images of the world's validation split: zero-shot shape accuracy,
caption retrieval R@1 and MaskCLIP dense accuracy on object pixels (see :func:`evaluate`).

Example::

    python tools/pretrain_toy_clip.py --model-config configs/clip/toy_vit.json \\
        --output checkpoints/toy_clip_vit.pt --steps 800 --batch-size 128 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import copy
import functools
import json
import logging
import math
import multiprocessing
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovseg.clip import CLIPTeacher  # noqa: E402
from ovseg.clip.build import register_model_config  # noqa: E402
from ovseg.data.datasets.toy_world import (  # noqa: E402
    SHAPES,
    caption_scene,
    generate_sample,
    render_scene,
    sample_rng,
    sample_scene,
    twin_scene,
)

logger = logging.getLogger("pretrain_toy_clip")

ZERO_SHOT_TEMPLATES = ("a photo of a {}.",)


# --------------------------------------------------------------------------- data
def make_batch(seed: int, step: int, batch_size: int, size: int, hard_negatives: bool):
    """The training batch of ``step``: uint8 images (B, H, W, 3) and B captions.

    With ``hard_negatives``, sample ``2j + 1`` is the twin of sample ``2j``: same layout,
    colours and caption template, different shapes.
    """
    images, captions = [], []
    per_step = batch_size // 2 if hard_negatives else batch_size
    for j in range(per_step):
        rng = sample_rng(seed, "pretrain", step * per_step + j)
        scene = sample_scene(rng, size)
        scenes = [scene, twin_scene(scene, rng)] if hard_negatives else [scene]
        caption_rng = copy.deepcopy(rng)  # twins share template, colour choice and order
        for s in scenes:
            image, _ = render_scene(s)  # the label is never used
            images.append(image)
            captions.append(caption_scene(s, copy.deepcopy(caption_rng))[0])
    return np.stack(images), captions


def _prefetch(args, start: int, stop: int) -> Iterator[Tuple[np.ndarray, List[str]]]:
    """Batches ``start..stop-1`` in order, drawn ahead of training.

    With ``--workers 0`` one background thread draws the next batch while the current one
    trains; with N > 0, N processes keep up to 2N batches in flight (the renderer is pure
    Python, so threads would share one core). A batch depends only on (seed, step), so the
    stream is the same either way.
    """
    make = functools.partial(
        make_batch,
        args.seed,
        batch_size=args.batch_size,
        size=args.size,
        hard_negatives=args.hard_negatives,
    )
    if args.workers > 0:
        pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
        depth = 2 * args.workers
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


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 255], detectron2's convention."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


# --------------------------------------------------------------------------- model
def build_model(model_config: str):
    """Register the JSON config with open_clip; return (name, model, tokenizer)."""
    name = register_model_config(model_config)
    model = open_clip.create_model(name, pretrained=None, precision="fp32", device="cpu")
    return name, model, open_clip.get_tokenizer(name)


def _param_groups(model: torch.nn.Module, weight_decay: float):
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
    """Symmetric InfoNCE; samples with identical captions are positives of each other."""
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


# --------------------------------------------------------------------------- evaluation
def evaluate(teacher: CLIPTeacher, *, seed: int, num_images: int, size: int = 64) -> Dict:
    """Zero-shot metrics of a CLIP teacher on the toy world's validation images.

    - ``zero_shot_accuracy``: top-1 over the 8 shape prompts ("a photo of a {}.") on the
      images holding exactly one object.
    - ``multi_label_accuracy``: over all images, |top-k shapes ∩ true shapes| / k with k the
      number of distinct shapes in the image.
    - ``retrieval_r1``: image -> caption (first caption of every image) top-1, a hit when the
      retrieved caption's text equals the image's own.
    - ``dense_object_accuracy``: MaskCLIP dense embeddings vs the shape prompts, scores
      upsampled bilinearly, argmax over the 8 shapes on object pixels; chance is 1/8.

    Returns:
        dict: the metrics above in percent, plus ``num_images`` and ``num_single``.
    """
    images, labels, captions, shape_sets, counts = [], [], [], [], []
    for i in range(num_images):
        image, label, caps, scene = generate_sample(seed, "validation", i, size)
        images.append(image)
        labels.append(label)
        captions.append(caps[0])
        shape_sets.append({SHAPES.index(o.shape) for o in scene.objects})
        counts.append(len(scene.objects))
    x = to_tensor(np.stack(images))
    labels_t = torch.from_numpy(np.stack(labels)).long()
    text = teacher.encode_text(SHAPES, ZERO_SHOT_TEMPLATES)
    img = torch.cat([teacher.encode_image(x[i : i + 128]) for i in range(0, len(x), 128)])
    scores = img @ text.t()
    single = [i for i, n in enumerate(counts) if n == 1]
    top1 = scores.argmax(dim=1)
    zs = float(np.mean([int(top1[i]) in shape_sets[i] for i in single])) if single else 0.0
    multi = []
    for i, truth in enumerate(shape_sets):
        pred = set(scores[i].topk(len(truth)).indices.tolist())
        multi.append(len(pred & truth) / len(truth))
    cap_emb = teacher.encode_text(captions, ("{}",))
    best = (img @ cap_emb.t()).argmax(dim=1).tolist()
    r1 = float(np.mean([captions[b] == captions[i] for i, b in enumerate(best)]))
    correct = total = 0
    for i in range(0, len(x), 64):
        dense = teacher.dense_embeddings(x[i : i + 64])
        logits = torch.einsum("bdhw,kd->bkhw", dense, text)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        pred, lab = logits.argmax(dim=1) + 1, labels_t[i : i + 64]  # label 0 = background
        correct += int(((pred == lab) & (lab > 0)).sum())
        total += int((lab > 0).sum())
    return {
        "zero_shot_accuracy": 100 * zs,
        "multi_label_accuracy": 100 * float(np.mean(multi)),
        "retrieval_r1": 100 * r1,
        "dense_object_accuracy": 100 * correct / max(total, 1),
        "dense_chance": 100 / len(SHAPES),
        "num_images": num_images,
        "num_single": len(single),
    }


def evaluate_model(model, tokenizer, args) -> Dict:
    """:func:`evaluate` on a frozen CPU copy of the model being trained."""
    teacher = CLIPTeacher(copy.deepcopy(model).cpu(), tokenizer)
    return evaluate(teacher, seed=args.world_seed, num_images=args.num_eval, size=args.size)


# --------------------------------------------------------------------------- checkpoints
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


_RESUME_KEYS = ("model_config", "batch_size", "seed", "size", "hard_negatives")


def export(model, path: Path, meta: dict) -> None:
    """Save an open_clip checkpoint: ``{"state_dict": fp16 weights, "ovseg_pretrain": meta}``.

    fp16 halves the file (the 49408-token embedding dominates); open_clip casts on load.
    """
    state = {
        k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()
    }
    atomic_save({"state_dict": state, "ovseg_pretrain": meta}, path)


def main(argv: Sequence[str] | None = None) -> Dict:
    args = parse_args(argv)
    logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    wall_start = time.perf_counter()
    work_dir = Path(args.work_dir or Path("output", "pretrain_toy_clip", Path(args.output).stem))
    last = work_dir / "last.pt"

    device = torch.device(args.device)
    name, model, tokenizer = build_model(args.model_config)
    model.to(device)
    pp = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(pp["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(pp["std"], device=device).view(1, 3, 1, 1) * 255
    optimizer = torch.optim.AdamW(
        _param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6
    )
    start, elapsed, history = 0, 0.0, []
    if args.resume and last.is_file():
        state = torch.load(last, map_location=device, weights_only=True)
        mismatched = {
            k: (state["args"][k], vars(args)[k])
            for k in _RESUME_KEYS
            if state["args"][k] != vars(args)[k]
        }
        if mismatched:
            raise ValueError(
                f"--resume: {last} was trained with other settings {mismatched} "
                "(saved, given); use another --work-dir or the same settings"
            )
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        start, elapsed, history = state["step"], state["elapsed"], state["history"]
        logger.info("Resumed from %s at step %d", last, start)
    elif args.resume:
        logger.info("--resume: no %s yet, starting from step 0", last)

    def save_last(step: int) -> None:
        atomic_save(
            {
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "elapsed": elapsed,
                "history": history,
                "args": vars(args),
            },
            last,
        )

    model.train()
    stop = min(args.steps, start + args.stop_after) if args.stop_after else args.steps
    batches = _prefetch(args, start, stop)
    bar = tqdm(
        range(start, stop),
        initial=start,
        total=args.steps,
        desc="pretrain",
        disable=args.no_progress,
        dynamic_ncols=True,
    )
    for step in bar:
        t0 = time.perf_counter()
        images, captions = next(batches)
        x = (to_tensor(images).to(device, non_blocking=True) - mean) / std
        lr = lr_at(step, args.lr, args.warmup, args.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = clip_loss(model, x, tokenizer(captions).to(device), captions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP's clamp: temperature at most 100
            model.logit_scale.clamp_(0, math.log(100))
        loss_value = loss.item()  # also waits for the device, so `elapsed` is honest
        elapsed += time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
        done = step + 1
        if done % args.eval_period == 0 or done == args.steps:
            model.eval()
            metrics = {
                "step": done,
                "loss": loss_value,
                "train_seconds": round(elapsed, 1),
                **evaluate_model(model, tokenizer, args),
            }
            model.train()
            history.append(metrics)
            logger.info("step %d: %s", done, json.dumps(metrics))
        if done % args.checkpoint_period == 0 or done == args.steps:
            save_last(done)
        if args.max_seconds and done < stop and time.perf_counter() - wall_start > args.max_seconds:
            logger.info("--max-seconds %g reached after step %d", args.max_seconds, done)
            stop = done
            break
    bar.close()
    batches.close()  # shuts the data workers down
    if stop < args.steps:
        save_last(stop)
        logger.info(
            "Stopped after step %d of %d; continue with --resume "
            "(the same weights come from --steps %d --stop-after %d)",
            stop,
            args.steps,
            args.steps,
            stop - start,
        )
        if not args.export_partial:
            return {}
    model.eval()
    if history and history[-1]["step"] == stop:
        final = history[-1]
    else:
        final = evaluate_model(model, tokenizer, args)
    meta = {
        "model_config": os.path.basename(args.model_config),
        "steps": stop,
        "schedule_steps": args.steps,
        "seed": args.seed,
        "train_seconds": round(elapsed, 1),
        "device": _device_name(device),
        "metrics": final,
        "command": shlex.join(["python", "tools/pretrain_toy_clip.py", *sys.argv[1:]]),
    }
    export(model, Path(args.output), meta)
    # measure what was shipped: the fp16 file as open_clip loads it
    reloaded = open_clip.create_model(name, pretrained=args.output, device="cpu")
    shipped = evaluate(
        CLIPTeacher(reloaded, tokenizer),
        seed=args.world_seed,
        num_images=args.num_eval,
        size=args.size,
    )
    logger.info(
        "Saved %s (%.1f s of training); reloaded: %s", args.output, elapsed, json.dumps(shipped)
    )
    wall = time.perf_counter() - wall_start
    logger.info("Wall time of this call: %.1f s", wall)
    with open(work_dir / "metrics.json", "w", encoding="utf-8") as f:
        json.dump(
            {
                **meta,
                "shipped_metrics": shipped,
                "wall_seconds_last_call": round(wall, 1),
                "history": history,
            },
            f,
            indent=1,
        )
    return shipped


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-config", required=True, help="open_clip JSON model config")
    p.add_argument("--output", required=True, help="checkpoint to write (.pt)")
    p.add_argument(
        "--work-dir",
        default="",
        help="resume state and metrics; default output/pretrain_toy_clip/<output stem>",
    )
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="seed of the pretrain stream and init")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the evaluated world")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--no-hard-negatives", dest="hard_negatives", action="store_false")
    p.add_argument("--num-eval", type=int, default=256, help="validation images to evaluate")
    p.add_argument("--eval-period", type=int, default=100)
    p.add_argument("--checkpoint-period", type=int, default=100)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on busy cores)"
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="train at most this many steps in this call, save, exit (0 = all)",
    )
    p.add_argument(
        "--device", default="cpu", help="torch device to train on (evaluation runs on the CPU)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes drawing batches (0 = one background thread; use N > 0 on a GPU)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=0,
        help="stop after the step that passes this many seconds of this call (0 = no limit)",
    )
    p.add_argument(
        "--export-partial",
        action="store_true",
        help="when stopping before --steps, also write --output from the weights so far",
    )
    p.add_argument("--resume", action="store_true", help="continue from <work-dir>/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = p.parse_args(argv)
    if args.batch_size < 2 or (args.hard_negatives and args.batch_size % 2):
        p.error(f"--batch-size {args.batch_size}: need >= 2, and even with hard negatives")
    if not os.path.isfile(args.model_config):
        p.error(f"--model-config {args.model_config!r} does not exist")
    if args.workers < 0:
        p.error(f"--workers {args.workers}: need >= 0")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        p.error(f"--device {args.device!r}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return args


if __name__ == "__main__":
    main()
