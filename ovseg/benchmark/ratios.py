"""Speed ratios, each of two variants timed in turns (A, B, A, B, ...).

``python -m ovseg.benchmark.ratios`` prints (and with ``--output`` writes) the medians and
ratios of:

- a MaskCLIP+ training step with the teacher in the loop against one reading a
  pseudo-label store (synthetic batches, the same config but PSEUDO_LABEL_SOURCE);
- the CLIP teacher's dense embeddings against a plain ``encode_image`` of the same batch
  (:func:`ovseg.benchmark.benchmark_teacher`);
- a config's training mapper against its per-pixel reference (the steps on every pixel) on the
  same synthetic files (:func:`ovseg.benchmark.mapper.mapper_ratio`);
- ovseg's evaluator update (``OpenVocabSemSegEvaluator.process``: argmax of the scores, ignore and
  range checks, the confusion matrix) against a bare ``np.bincount`` of the same arrays.

On a machine shared with other jobs the absolute times drift with the load; timing the two
variants in turns spreads it over both, so the ratios hold where the times do not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..utils.io import atomic_write_json
from .timing import interleaved

__all__ = ["evaluator_ratio", "interleaved", "main", "store_ratio", "teacher_ratio"]

_ZEGCLIP = "configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml"
_LSEG = "configs/voc/lseg/lseg_vitb16_inductive_20k_bs16_ovseg-variant.yaml"
_MCP = "configs/voc/maskclip_plus/maskclip_plus_rn50_r101_deeplabv2_transductive_20k_bs16.yaml"


def store_ratio(size: int, batch: int, repeats: int, config: str = _MCP) -> Dict[str, Any]:
    """MaskCLIP+ training step: teacher in the loop (a) against the store (b)."""
    from detectron2.utils.events import EventStorage

    from .train import _build, training_config

    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in ("online_augmented", "store"):
            opts = ["MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE", source, "DATASETS.PSEUDO_LABELS",
                    "", "MODEL.CLIP.CACHE_DIR", tmp]  # fmt: skip
            if source == "store":  # the student's normalisation is the augmented crop's
                opts += ["MODEL.MASKCLIP_PLUS.TEACHER_INPUT_NORMALIZATION", "clip"]
            cfg = training_config(config, opts, device="cpu", batch=batch, size=size)
            torch.manual_seed(0)
            steps[source] = _build(cfg, "synthetic")[1]
        with EventStorage(0):
            res = interleaved(steps["online_augmented"].run_step, steps["store"].run_step, repeats)
    return {"config": config, "size": size, "batch": batch, "a": "teacher in loop", "b": "store",
            **res}  # fmt: skip


def teacher_ratio(model: str, size: int, batch: int, repeats: int) -> Dict[str, Any]:
    """The teacher's dense embeddings against ``encode_image`` (medians taken in turns by
    :func:`ovseg.benchmark.benchmark_teacher`)."""
    from .teacher import benchmark_teacher

    with tempfile.TemporaryDirectory() as tmp:
        res = benchmark_teacher(model=model, cache_dir=tmp, size=(size, size), batch=batch,
                                iters=repeats, warmup=1, clock="process")  # fmt: skip
    dense, plain = res["dense_s"], res["encode_image_s"]
    return {"model": model, "size": size, "batch": batch, "a": "encode_image",
            "b": "dense_embeddings", "a_s": plain, "b_s": dense, "b_over_a": dense / plain,
            "clock": "process", "teacher": res}  # fmt: skip


def evaluator_ratio(size: int, classes: int, images: int, repeats: int) -> Dict[str, Any]:
    """``OpenVocabSemSegEvaluator.process`` on (K, H, W) scores (a) against ``np.bincount`` of the
    predictions it would take (b)."""
    from detectron2.data import MetadataCatalog

    from ..evaluation.sem_seg_evaluator import OpenVocabSemSegEvaluator

    name = f"_ovseg_ratio_{classes}"
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(stuff_classes=[f"c{i}" for i in range(classes)],
                                      ignore_label=255)  # fmt: skip
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(classes, size, size, generator=g) for _ in range(images)]
    gts = [torch.randint(0, classes, (size, size), generator=g) for _ in range(images)]
    inputs = [{"file_name": f"{i}.jpg", "sem_seg": gt} for i, gt in enumerate(gts)]
    outputs = [{"sem_seg": s} for s in scores]
    preds = [s.argmax(0).numpy() for s in scores]
    gts_np = [gt.numpy() for gt in gts]

    def bare():
        for gt, pred in zip(gts_np, preds):
            np.bincount(classes * gt.ravel() + pred.ravel(), minlength=classes * classes)

    def argmax_bare():  # the same work from the scores: argmax, then the bincount
        for s, gt in zip(scores, gts_np):
            pred = s.argmax(0).numpy()
            np.bincount(classes * gt.ravel() + pred.ravel(), minlength=classes * classes)

    res = interleaved(lambda: evaluator.process(inputs, outputs), bare, repeats)
    with_argmax = interleaved(lambda: evaluator.process(inputs, outputs), argmax_bare, repeats)
    mpix = images * size * size / 1e6
    return {"size": size, "classes": classes, "images": images, "a": "evaluator.process",
            "b": "np.bincount", "argmax_then_bincount": with_argmax,
            "a_mpix_per_s": mpix / res["a_s"],
            "b_mpix_per_s": mpix / res["b_s"], **res}  # fmt: skip


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--size", type=int, default=128, help="MaskCLIP+ crop side")
    p.add_argument("--batch", type=int, default=2, help="MaskCLIP+ and teacher batch")
    p.add_argument("--teacher-model", default="ViT-B-16")
    p.add_argument("--teacher-size", type=int, default=224)
    p.add_argument("--only", nargs="*", default=["store", "teacher", "evaluator", "mapper"])
    p.add_argument("--mapper-configs", nargs="*", default=[_ZEGCLIP, _LSEG])
    p.add_argument("--mapper-images", type=int, default=16, help="synthetic 375x500 files")
    p.add_argument("--output", default="")
    a = p.parse_args(argv)
    res: Dict[str, Any] = {"threads": torch.get_num_threads()}
    if "store" in a.only:
        res["store"] = store_ratio(a.size, a.batch, a.repeats)
    if "teacher" in a.only:
        res["teacher"] = teacher_ratio(a.teacher_model, a.teacher_size, a.batch, a.repeats)
    if "evaluator" in a.only:
        res["evaluator"] = evaluator_ratio(512, 21, 4, a.repeats)
    for config in a.mapper_configs if "mapper" in a.only else ():
        from .mapper import mapper_ratio

        res[f"mapper {config}"] = mapper_ratio(config, a.mapper_images, a.repeats)
    for key, r in res.items():
        if isinstance(r, dict):
            print(f"{key}: {r['a']} {r['a_s'] * 1000:.1f} ms, {r['b']} {r['b_s'] * 1000:.1f} "
                  f"ms, {r['b']}/{r['a']} = {r['b_over_a']:.3f}", flush=True)  # fmt: skip
    if a.output:
        atomic_write_json(a.output, res)
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
