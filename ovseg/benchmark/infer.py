"""Inference throughput of any ovseg config: images/s and latency, whole and slide.

:func:`benchmark_inference` builds the model as ``train_net.py --eval-only`` does (no
checkpoint: random weights time the same), feeds one synthetic batch of images of the
config's test size (short side INPUT.MIN_SIZE_TEST, 4:3 unless ``size`` is given) through
the model's own eval forward (normalisation, vocabulary, whole or sliding-window inference,
resize to the original size) in ``torch.inference_mode`` and, off fp32, autocast, and times
it with :func:`ovseg.benchmark.time_calls` (medians). FLOPs per image are counted once.
"""

from __future__ import annotations

import contextlib
import tempfile
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from detectron2.config import CfgNode

from .flops import flop_counter
from .timing import time_calls

__all__ = ["benchmark_inference", "inference_size"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def inference_size(cfg: CfgNode) -> Tuple[int, int]:
    """(height, width) of a 4:3 landscape image at the config's test short side."""
    short = int(cfg.INPUT.MIN_SIZE_TEST)
    return short, int(round(short * 4 / 3))


def _inputs(batch: int, size: Tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return [
        {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
         "height": h, "width": w}
        for _ in range(batch)
    ]  # fmt: skip


def _no_mode(model: torch.nn.Module, mode: str) -> str:
    """Why ``model`` has no ``mode`` of inference ("" when it has): a student with its own
    test path (FreeSeg, XPM) ignores TEST.INFERENCE_MODE and tests whole images."""
    # a model outside ovseg (no OpenVocabSegmentor) has its own test path too
    if mode == "whole" or not getattr(model, "own_test_path", lambda: True)():
        return ""
    return f"{type(model).__name__} tests whole images only (its own inference path)"


def _time_mode(model, inputs, device, iters: int, warmup: int, time_limit_s) -> Dict[str, Any]:
    """One inference mode's figures (the mode set on ``model``, under the caller's autocast)."""
    timed: Dict[str, int] = {}
    s = time_calls({"call": lambda: model(inputs)}, device, iters, warmup,
                   time_limit_s=time_limit_s, timed=timed)["call"]  # fmt: skip
    with flop_counter() as counter:  # with autograd on: the counter's module tracker hooks in
        model(inputs)
    return {
        "latency_s": s,
        "images_per_s": len(inputs) / s,
        "flops_per_image": counter.get_total_flops() / len(inputs),
        "timed_calls": timed["call"],
    }


def benchmark_inference(
    cfg: CfgNode,
    *,
    modes: Sequence[str] = ("whole", "slide"),
    batch: int = 1,
    size: Optional[Tuple[int, int]] = None,
    precision: str = "fp32",
    iters: int = 10,
    warmup: int = 3,
    seed: int = 0,
    frozen: Sequence[str] = (),
    time_limit_s: Optional[float] = None,
) -> Dict[str, Any]:
    """Images/s and latency of a config's eval forward per inference mode.

    Args:
        cfg (CfgNode): any ovseg config (e.g. from :func:`ovseg.benchmark.benchmark_config`).
        modes: inference modes to time ("whole", "slide").
        batch (int): images per forward (detectron2's test loader uses 1).
        size ((int, int), optional): image (height, width); default :func:`inference_size`.
        precision (str): "fp32", or autocast in "bf16"/"fp16".
        iters (int): timed calls per mode.
        warmup (int): untimed calls first.
        seed (int): torch seed before the model is built.
        frozen: submodules frozen after the build, as a stage's checkpoint freezes them
            (:func:`ovseg.benchmark.freeze_modules`; FreeSeg's "prompt": cached text).
        time_limit_s (float, optional): per mode, fewer timed calls (at least 3) once they
            took this long (:func:`ovseg.benchmark.time_calls`).

    Returns:
        dict: per mode "<mode>": {"latency_s", "images_per_s", "flops_per_image",
        "timed_calls"},
        "skipped_modes" (mode: why the model has none), and the settings.
    """
    from ..engine import Trainer
    from .train import freeze_modules

    if precision != "fp32" and precision not in _DTYPES:
        raise ValueError(f"precision {precision!r} is not one of fp32, bf16, fp16")
    device = torch.device(cfg.MODEL.DEVICE)
    size = tuple(size) if size else inference_size(cfg)
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not cfg.MODEL.CLIP.PRETRAINED and not cfg.MODEL.CLIP.CACHE_DIR:
            cfg = cfg.clone()
            cfg.MODEL.CLIP.CACHE_DIR = tmp
        torch.manual_seed(seed)
        model = Trainer.build_model(cfg).eval()
        freeze_modules(model, frozen)
        inputs = _inputs(batch, size)
        skipped = {m: _no_mode(model, m) for m in modes if _no_mode(model, m)}
        autocast = (
            torch.autocast(device.type, dtype=_DTYPES[precision])
            if precision != "fp32"
            else contextlib.nullcontext()
        )
        for mode in [m for m in modes if m not in skipped]:
            model.inference_mode = mode
            with autocast:
                results[mode] = _time_mode(model, inputs, device, iters, warmup, time_limit_s)
    return {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "device": str(device),
        "precision": precision,
        "batch": batch,
        "size": list(size),
        "slide_window": list(cfg.TEST.SLIDE_WINDOW),
        "slide_stride": list(cfg.TEST.SLIDE_STRIDE),
        "iters": iters,
        "warmup": warmup,
        "frozen": list(frozen),
        "skipped_modes": skipped,
        **results,
    }
