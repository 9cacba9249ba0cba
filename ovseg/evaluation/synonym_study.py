"""Which synonym merge is better: the toy world's validation images evaluated with synonyms
given to its seen classes, each class scored by the max over its synonyms or by the mean of
their embeddings (MODEL.OVSEG.SYNONYM_MERGE); ``tools/compare_synonym_merge.py``.

The validation split is registered a second time as a custom dataset whose vocabulary holds
the synonyms, so the real evaluator scores the same labels against the same pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Dict, List, Optional, Sequence

from ..data.datasets.toy_world import CLASSES, COLORS, SPLITS, TEXTURES

__all__ = ["SYNONYM_SETS", "main", "study"]

# unseen classes keep their plain names: synonyms are given to seen classes only
_UNKNOWN = {"background": "backdrop", "circle": "disc", "square": "box", "star": "asterisk",
            "cross": "plus", "diamond": "rhombus", "crescent": "moon"}  # fmt: skip


def _with(fn) -> List[str]:
    unseen = set(SPLITS["a"])
    return [name if name in unseen else ", ".join([name, *fn(name)]) for name in CLASSES]


SYNONYM_SETS: Dict[str, List[str]] = {
    "plain": list(CLASSES),
    # words the toy CLIP's captions use: colour-qualified shapes, textured backgrounds
    "caption words": _with(
        lambda n: [f"{t} background" for t in TEXTURES]
        if n == "background"
        else [f"{c} {n}" for c in COLORS]
    ),
    # words its captions never use (their embeddings carry no learnt meaning)
    "unknown words": _with(lambda n: [_UNKNOWN[n]]),
}


def _evaluate(config: str, weights: str, vocabulary: List[str], merge: str, opts) -> dict:
    from ..engine import Trainer
    from ..engine.checkpoint import load_model_weights
    from ..engine.defaults import load_config

    root = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "toy_world")
    spec = {"name": "toy_world_synonyms_val", "vocabulary": vocabulary,
            "images": os.path.join(root, "images", "validation"),
            "labels": os.path.join(root, "annotations_detectron2", "validation"),
            "unseen": list(SPLITS["a"])}  # fmt: skip
    cfg = load_config(config, [*opts, "DATASETS.CUSTOM", repr([spec]), "DATASETS.TEST",
                               "('toy_world_synonyms_val',)", "MODEL.OVSEG.SYNONYM_MERGE", merge,
                               "TEST.SAVE_CONFUSION_MATRIX", "False"])  # fmt: skip
    model = Trainer.build_model(cfg)
    if weights:
        load_model_weights(model, weights, cfg=cfg)  # evaluated: every weight must come from it
    return Trainer.test(cfg, model)["sem_seg"]


def study(config: str, weights: str = "", opts: Sequence[str] = ()) -> List[dict]:
    """One row per (synonym set, merge): mIoU over all, seen and unseen classes. The
    evaluations' own files go to a temporary folder (the rows are the study's output)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="ovseg_synonyms_") as scratch:
        opts = [*opts, "OUTPUT_DIR", scratch]
        for set_name, vocabulary in SYNONYM_SETS.items():
            for merge in ("max",) if set_name == "plain" else ("max", "mean"):
                res = _evaluate(config, weights, vocabulary, merge, opts)
                rows.append({"synonyms": set_name, "merge": "-" if set_name == "plain" else merge,
                             "mIoU": res["mIoU"], "mIoU-seen": res["mIoU-seen"],
                             "mIoU-unseen": res["mIoU-unseen"]})  # fmt: skip
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config-file",
        default="configs/toy/maskclip.yaml",
        help="a toy config: the MaskCLIP teacher (default) or a student with --weights",
    )
    parser.add_argument("--weights", default="", help="a trained toy student's checkpoint")
    parser.add_argument("--output", help="also write the rows as JSON here")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs (or after --opts)"
    )
    from ..utils.cli import parse_trailing_opts, run_reporting_errors

    args = parse_trailing_opts(parser, argv)

    return run_reporting_errors("compare_synonym_merge.py", lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    from ..engine.defaults import load_config
    from ..utils.io import atomic_write_text, check_output_file

    load_config(args.config_file, args.opts)  # a missing file or misspelt key stops here
    check_output_file(args.output, ".json")  # before five evaluations, not after
    if args.weights and not os.path.isfile(args.weights):
        raise FileNotFoundError(
            f"--weights {args.weights} is not a file; give a trained toy student's checkpoint "
            "(e.g. <run OUTPUT_DIR>/model_final.pth)"
        )
    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    if not os.path.isdir(os.path.join(root, "toy_world", "images", "validation")):
        raise FileNotFoundError(
            f"no toy world under DETECTRON2_DATASETS={root!r}; point it at one (make demo "
            "keeps one in .cache/toy_world_default) or write one with "
            f"python -m ovseg.data.datasets.toy_world --root {root}"
        )
    rows = study(args.config_file, args.weights, args.opts)
    print("| synonyms | merge | mIoU | mIoU-seen | mIoU-unseen |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['synonyms']} | {r['merge']} | {r['mIoU']:.1f} | {r['mIoU-seen']:.1f} | "
              f"{r['mIoU-unseen']:.1f} |")  # fmt: skip
    if args.output:
        atomic_write_text(args.output, json.dumps(rows, indent=1))
