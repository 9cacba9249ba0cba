#!/usr/bin/env python
"""Pretrain a tiny open_clip model on the toy world's captions (never its pixel labels).

The result is an ordinary open_clip checkpoint that ``build_clip_teacher`` loads; the
checkpoint records this command so ``make demo RETRAIN_CLIP=1`` can retrain it. Data, loss,
schedule and evaluation: ``ovseg.clip.toy_pretrain`` and ``ovseg.clip.toy_evaluation``.

Example::

    python tools/pretrain_toy_clip.py --model-config configs/clip/toy_vit.json \\
        --output checkpoints/toy_clip_vit.pt --steps 800 --batch-size 128 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from typing import Any, Dict, Optional, Sequence

from ovseg.clip.toy_pretrain import ToyPretrainSettings, pretrain
from ovseg.utils.cli import run_reporting_errors

DEFAULTS = {f.name: f.default for f in dataclasses.fields(ToyPretrainSettings)}


def parse_args(argv: Optional[Sequence[str]] = None) -> ToyPretrainSettings:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-config", required=True, help="open_clip JSON model config")
    p.add_argument("--output", required=True, help="checkpoint to write (.pt)")
    p.add_argument(
        "--work-dir",
        default="",
        help="resume state and metrics; default output/pretrain_toy_clip/<output stem>",
    )
    for name in ("steps", "batch_size", "warmup", "eval_period", "checkpoint_period"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=DEFAULTS[name])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--seed", type=int, default=0, help="seed of the pretrain stream and init")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the evaluated world")
    p.add_argument("--size", type=int, default=DEFAULTS["size"], help="image side in pixels")
    p.add_argument("--no-hard-negatives", dest="hard_negatives", action="store_false")
    p.add_argument(
        "--num-eval", type=int, default=DEFAULTS["num_eval"], help="validation images to evaluate"
    )
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
    settings = ToyPretrainSettings(**vars(p.parse_args(argv)))
    try:
        settings.check()
    except ValueError as e:
        p.error(str(e))
    return settings


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    settings = parse_args(argv)
    logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ovseg.clip.toy_pretrain").setLevel(logging.INFO)
    args = sys.argv[1:] if argv is None else list(argv)
    return pretrain(settings, command=shlex.join(["python", "tools/pretrain_toy_clip.py", *args]))


if __name__ == "__main__":
    sys.exit(run_reporting_errors("pretrain_toy_clip.py", main))
