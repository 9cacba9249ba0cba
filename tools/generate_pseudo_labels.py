#!/usr/bin/env python
"""Label a dataset once with a teacher (e.g. training-free MaskCLIP) into a pseudo-label store.

Examples:
    python tools/generate_pseudo_labels.py \\
        --config-file configs/voc/maskclip/maskclip_vitb16_bs1.yaml \\
        --dataset voc_sem_seg_train --output pseudo/voc_maskclip_vitb16 --threshold 0.5
    python tools/generate_pseudo_labels.py --config-file CONFIG --output DIR --num-gpus 8 \\
        MODEL.OVSEG.TEST_VOCABULARY voc20

Every process labels every world_size-th image (by image id); images already in the store
are skipped, so re-running the same command after a kill finishes the job. The store then
feeds training through DATASETS.PSEUDO_LABELS. Without CUDA, --num-gpus N starts N CPU
processes connected through gloo.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

import ovseg  # noqa: F401  (registers datasets, mappers, models)
from ovseg.compat import launch
from ovseg.data import build_dataset_mapper
from ovseg.engine import setup
from ovseg.pseudo import (
    SCORE_KINDS,
    PseudoLabelStore,
    build_manifest,
    generate_pseudo_labels,
    labeller_fingerprint,
    labeller_settings,
    score_kind_of,
)

logger = logging.getLogger("ovseg.tools.generate_pseudo_labels")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="teacher config")
    parser.add_argument(
        "--dataset", default="", help="registered dataset name (default: DATASETS.TRAIN[0])"
    )
    parser.add_argument("--output", required=True, help="the store folder (created or resumed)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="pixels less confident than this are labelled ignore (default 0: keep all; the "
        "confidence PNGs allow a stricter cut later)",
    )
    parser.add_argument(
        "--scores",
        choices=("auto", *SCORE_KINDS),
        default="auto",
        help="what the model's sem_seg scores are; auto: its sem_seg_scores attribute, else "
        "logits",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto", help="tcp://host:port of machine 0")
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides as KEY VALUE pairs at the end (an optional leading --opts is "
        "accepted)",
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    # "--opts K V ..." is accepted as well as detectron2's bare trailing "K V ..."
    if "--opts" in argv:
        i = argv.index("--opts")
        argv = argv[:i] + argv[i + 1 :]
    args = get_parser().parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    args.command = shlex.join(["python", "tools/generate_pseudo_labels.py", *argv])
    return args


def _all_ok(error: str | None) -> None:
    """Raise in every process when any process failed (so none waits at a barrier)."""
    errors = [e for e in comm.all_gather(error) if e]
    if errors:
        raise RuntimeError(errors[0] if error is None else error)


def _open_store(args, manifest: dict) -> PseudoLabelStore:
    store, error = None, None
    if comm.is_main_process():
        try:
            store = PseudoLabelStore.create(args.output, manifest)
        except (ValueError, OSError) as e:
            error = str(e)
    _all_ok(error)
    if store is None:
        expect = {"fingerprint": manifest["fingerprint"], "vocabulary": manifest["vocabulary"]}
        try:
            store = PseudoLabelStore.open(args.output, expect=expect)
        except (ValueError, OSError) as e:
            # e.g. a randomly initialised teacher that differs between processes
            error = f"rank {comm.get_rank()}: {e}"
    _all_ok(error)
    return store


def main(args: argparse.Namespace) -> dict:
    cfg = setup(args)
    dataset = args.dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    if not dataset:
        raise ValueError("No --dataset given and DATASETS.TRAIN is empty; name the dataset")
    if dataset not in DatasetCatalog.list():
        raise KeyError(f"Dataset {dataset!r} is not registered; known: {DatasetCatalog.list()}")
    dataset_dicts = DatasetCatalog.get(dataset)
    mapper = build_dataset_mapper(cfg, False, dataset)  # test mode: labels at original size
    vocabulary = getattr(mapper, "vocabulary", None)
    if vocabulary is None:
        vocabulary = mapper(dict(dataset_dicts[0]))["vocabulary"]

    # the same random initialisation in every process (only tiny random teachers have one)
    seed_all_rng(max(int(cfg.SEED), 0))
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    kind = score_kind_of(model, args.scores)
    settings = {**labeller_settings(cfg), "scores": kind}
    fingerprint, teacher = labeller_fingerprint(model, settings)
    manifest = build_manifest(
        fingerprint=fingerprint,
        teacher=teacher,
        vocabulary=vocabulary,
        unseen=MetadataCatalog.get(dataset).get("unseen_classes", None) or (),
        threshold=args.threshold,
        dataset=dataset,
        command=args.command,
    )
    store = _open_store(args, manifest)

    error, stats = None, {}
    try:
        stats = generate_pseudo_labels(
            model,
            dataset_dicts,
            mapper,
            store,
            threshold=args.threshold,
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
            progress=not args.no_progress,
            score_kind=kind,
        )
    except Exception as e:
        error = f"rank {comm.get_rank()}: {type(e).__name__}: {e}"
        raise
    finally:
        _all_ok(error)  # every process reaches this collective, failed or not
    if comm.is_main_process():
        count = store.finalize()
        logger.info(f"{count} of {len(dataset_dicts)} images of {dataset} labelled in {store.root}")
        if count < len(dataset_dicts):
            logger.warning(f"{len(dataset_dicts) - count} images are missing; re-run to finish")
    return stats


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
