"""Labelling one large photo: the whole (K, H, W) scores against the chunked labels.

``python -m ovseg.benchmark.photo --size 3000 4000`` runs ``ovseg.Predictor.predict`` on a
synthetic photo in a fresh process per variant (one peak-memory reading each):

- ``whole``: the model's "sem_seg" at the photo's size, a softmax over the classes and the
  argmax of the whole tensor (what the API did before ``ovseg/modeling/full_size.py``);
- ``chunked``: the API as it is (the model at its input size, the labels a few classes at a
  time).

Each prints its seconds and its peak resident memory above the process's after a warm-up
call on a small image (the model and the text embeddings), in turns (whole, chunked, whole,
...), medians over ``--repeats``. On CUDA the peak is the allocator's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..utils.io import atomic_write_json
from .timing import peak_memory, synchronize

__all__ = ["VARIANTS", "main", "measure_one"]

VARIANTS = ("whole", "chunked")
_CONFIG = "ade20k/maskclip/maskclip_vitb16_bs1.yaml"
_OPTS = "MODEL.CLIP.PRETRAINED '' MODEL.CLIP.TEMPLATES single"


def measure_one(
    variant: str, size: List[int], config: str, opts: str, vocabulary: str, device: str
) -> Dict[str, Any]:
    """One variant in this process: seconds and peak memory (GiB) above the warm-up's."""
    import ovseg

    predictor = ovseg.Predictor(config, device=device, opts=opts)
    if variant == "whole":  # the model's outputs at the photo's size, as before
        predictor.model.resizes_outputs_last = False
    predictor.predict(np.zeros((64, 64, 3), np.uint8), vocabulary)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base, kind = peak_memory(dev)
    photo = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    start = time.perf_counter()
    pred = predictor.predict(photo, vocabulary)
    if variant == "whole":
        pred.scores  # noqa: B018  (the whole (K, H, W), as the API held it)
    synchronize(dev)
    seconds = time.perf_counter() - start
    peak, _ = peak_memory(dev)
    return {"variant": variant, "seconds": seconds, "peak_gib": peak - base, "memory": kind,
            "classes": len(pred.names)}  # fmt: skip


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[3000, 4000], metavar=("H", "W"))
    parser.add_argument("--config", default=_CONFIG, help="a config under configs/, or a file")
    parser.add_argument("--opts", default=_OPTS, help="config overrides, one string")
    parser.add_argument("--vocabulary", default="ade150")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", default="", help="also write the JSON results here")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    if args.one:
        res = measure_one(args.one, args.size, args.config, args.opts, args.vocabulary,
                          args.device)  # fmt: skip
        print(json.dumps(res))
        return res
    runs: Dict[str, List[Dict[str, Any]]] = {v: [] for v in VARIANTS}
    for _ in range(max(1, args.repeats)):
        for variant in VARIANTS:
            cmd = [sys.executable, "-m", "ovseg.benchmark.photo", "--one", variant,
                   "--size", *map(str, args.size), "--config", args.config, "--opts", args.opts,
                   "--vocabulary", args.vocabulary, "--device", args.device]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"{variant} failed:\n{out.stderr[-2000:]}")
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    res: Dict[str, Any] = {"size": args.size, "config": args.config, "vocabulary":
                           args.vocabulary, "device": args.device}  # fmt: skip
    for variant, rows in runs.items():
        res[variant] = {
            "seconds": statistics.median(r["seconds"] for r in rows),
            "peak_gib": statistics.median(r["peak_gib"] for r in rows),
            "memory": rows[0]["memory"],
            "classes": rows[0]["classes"],
        }
        print(f"{variant}: {res[variant]['seconds']:.1f} s, peak {res[variant]['peak_gib']:.2f} "
              f"GiB above the warm-up ({res[variant]['memory']})", file=sys.stderr)  # fmt: skip
    res["chunked_over_whole"] = {
        k: res["chunked"][k] / res["whole"][k] for k in ("seconds", "peak_gib")
    }
    print(json.dumps(res, indent=2))
    if args.output:
        atomic_write_json(args.output, res)
    return res


if __name__ == "__main__":
    main()
