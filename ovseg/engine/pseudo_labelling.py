"""Label a dataset once with a teacher into a pseudo-label store.

The job behind ``tools/generate_pseudo_labels.py``: its arguments (:func:`parse_args`), the
labeller a config builds (:func:`build_labeller`, also timed by ``tools/benchmark.py
pseudo``) and the function every process runs (:func:`main`). Every process labels every
world_size-th image (by image id); images already in the store are skipped, so re-running
the same command after a kill finishes the job.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from torch import nn

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..data import build_dataset_mapper
from ..pseudo import (
    SCORE_KINDS,
    build_manifest,
    generate_pseudo_labels,
    labeller_fingerprint,
    labeller_settings,
    open_store,
    score_kind_of,
)
from ..pseudo.store import generation_lock
from ..utils.cli import parse_trailing_opts, without_opts_flag
from ..utils.io import check_output_file
from .checkpoint import load_model_weights
from .checks import UnknownDatasetError, closest_datasets
from .defaults import load_config, setup
from .labelling_errors import labelling_errors
from .pseudo_instances import main as instances_main
from .pseudo_instances import makes_instance_pseudo_labels

__all__ = [
    "Labeller",
    "build_labeller",
    "check_arguments",
    "get_parser",
    "labeller_manifest",
    "main",
    "parse_args",
]

logger = logging.getLogger("ovseg.tools.generate_pseudo_labels")

TOOL = "tools/generate_pseudo_labels.py"
EXAMPLES = f"""examples:
  python {TOOL} \\
      --config-file configs/voc/maskclip/maskclip_vitb16_bs1.yaml \\
      --dataset voc_sem_seg_train --output pseudo/voc_maskclip_vitb16 --threshold 0.5
  python {TOOL} --config-file CONFIG --output DIR --num-gpus 8 \\
      MODEL.OVSEG.TEST_VOCABULARY voc20

The store then feeds training through DATASETS.PSEUDO_LABELS. Images already in the store are
skipped: re-running the same command after a kill finishes the job. Without CUDA,
--num-gpus N starts N CPU processes connected through gloo.
"""


def get_parser() -> argparse.ArgumentParser:
    """The arguments of ``tools/generate_pseudo_labels.py``."""
    parser = argparse.ArgumentParser(
        prog=os.path.basename(TOOL),  # "<tool>.py: error: ...", as every tool's errors
        description=__doc__.split("\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="teacher config")
    parser.add_argument(
        "--dataset", default="", help="registered dataset name (default: DATASETS.TRAIN[0])"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="the store folder (created or resumed); the run's log.txt and config.yaml go to "
        "OUTPUT_DIR, by default <output>_generation beside it",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="pixels less confident than this are labelled ignore (default 0: keep all; the "
        "confidence PNGs allow a stricter cut later); XPM configs: pseudo instances scoring "
        "less are not written",
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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the tool's arguments; ``command`` records the command line for the manifest.

    "--opts K V ..." is accepted as well as detectron2's bare trailing "K V ...".
    """
    argv = without_opts_flag(argv)  # the command recorded, as parsed
    args = parse_trailing_opts(get_parser(), argv)
    args.command = shlex.join(["python", TOOL, *argv])
    if "OUTPUT_DIR" not in args.opts[::2]:
        # the log and config.yaml beside the store: not ./output, nor the teacher run's folder
        # (whose own config.yaml the config's OUTPUT_DIR would name)
        args.opts = [*args.opts, "OUTPUT_DIR", args.output.rstrip("/\\") + "_generation"]
    return args


@dataclass
class Labeller:
    """A config's teacher, ready to label a dataset."""

    model: nn.Module  # in eval mode
    mapper: Callable[[dict], dict]  # test mode: labels at the original size
    dataset: str
    dataset_dicts: List[dict]
    vocabulary: List[str]
    score_kind: str  # "logits" or "probabilities"


def build_labeller(cfg: CfgNode, dataset: str = "", scores: str = "auto") -> Labeller:
    """Build the teacher of a config (weights from MODEL.WEIGHTS), its test mapper and data.

    Args:
        cfg (CfgNode): the teacher's config.
        dataset (str): a registered dataset; default DATASETS.TRAIN[0].
        scores (str): "auto" (the model's ``sem_seg_scores``), "logits" or "probabilities".

    Returns:
        Labeller: the model, mapper, dataset dicts, vocabulary and score kind.
    """
    dataset = dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    if not dataset:
        raise ValueError("No --dataset given and DATASETS.TRAIN is empty; name the dataset")
    if dataset not in DatasetCatalog.list():
        raise UnknownDatasetError(
            f"--dataset {dataset!r} is not a registered dataset; {closest_datasets(dataset)}"
        )
    dataset_dicts = DatasetCatalog.get(dataset)
    mapper = build_dataset_mapper(cfg, False, dataset)
    vocabulary = getattr(mapper, "vocabulary", None)
    if vocabulary is None:
        vocabulary = mapper(dict(dataset_dicts[0]))["vocabulary"]
    # the same random initialisation in every process (only tiny random teachers have one)
    seed_all_rng(max(int(cfg.SEED), 0))
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        # a student's config relabelled MODEL.META_ARCHITECTURE MaskCLIP keeps the student's
        # converted backbone in MODEL.WEIGHTS, which fits none of the weightless teacher; a
        # checkpoint an ovseg run wrote must still fit whole
        load_model_weights(model, cfg.MODEL.WEIGHTS, complete=False, some=False, cfg=cfg)
    model.eval()
    kind = score_kind_of(model, scores)
    return Labeller(model, mapper, dataset, dataset_dicts, list(vocabulary), kind)


def labeller_manifest(
    cfg: CfgNode, labeller: Labeller, threshold: float, command: str = ""
) -> Dict[str, Any]:
    """The store manifest of a labeller: its fingerprint, vocabulary, unseen classes and
    threshold (a store refuses labels from another one)."""
    settings = {**labeller_settings(cfg), "scores": labeller.score_kind}
    fingerprint, teacher = labeller_fingerprint(labeller.model, settings)
    return build_manifest(
        fingerprint=fingerprint,
        teacher=teacher,
        vocabulary=labeller.vocabulary,
        unseen=MetadataCatalog.get(labeller.dataset).get("unseen_classes", None) or (),
        threshold=threshold,
        dataset=labeller.dataset,
        command=command,
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a bad config, override or --dataset before setup writes OUTPUT_DIR (and, run by
    the tool, before any process starts: a child's error would end in a traceback)."""
    load_config(args.config_file, args.opts)  # also registers DATASETS.CUSTOM
    if args.dataset and args.dataset not in DatasetCatalog.list():
        raise UnknownDatasetError(
            f"--dataset {args.dataset!r} is not a registered dataset; "
            f"{closest_datasets(args.dataset)}"
        )
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise FileExistsError(f"output {args.output} is a file; give a folder name for the store")
    if not 0.0 <= args.threshold <= 1.0:  # NaN too
        raise ValueError(f"--threshold {args.threshold} is not in [0, 1] (0: keep every pixel)")
    # the store and the run's <output>_generation folder must be creatable
    check_output_file(os.path.join(args.output, "manifest.json"), "folder", "--output")
    # another job generating into the store: refused before setup appends this job's log to
    # that job's OUTPUT_DIR/log.txt and replaces its config.yaml
    if getattr(args, "machine_rank", 0) == 0 and comm.get_rank() == 0:
        generation_lock(args.output).refuse_if_held()


def main(args: argparse.Namespace) -> Dict[str, int]:
    """Label this process's share of the dataset into ``args.output`` (every process):
    semantic labels, or an XPM config's caption pseudo instances (``pseudo_instances.py``).

    Returns:
        dict: this process's {"total", "written", "skipped"} image counts.
    """
    check_arguments(args)
    cfg = setup(args)
    if makes_instance_pseudo_labels(cfg):  # XPM: caption pseudo instances
        return instances_main(cfg, args)
    labeller = build_labeller(cfg, args.dataset, args.scores)
    manifest = labeller_manifest(cfg, labeller, args.threshold, args.command)
    store = open_store(args.output, manifest)
    with labelling_errors(cfg, labeller.dataset, labeller.model):
        stats = generate_pseudo_labels(
            labeller.model,
            labeller.dataset_dicts,
            labeller.mapper,
            store,
            threshold=args.threshold,
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
            progress=not args.no_progress,
            score_kind=labeller.score_kind,
        )
    if comm.is_main_process():
        count = store.finalize()
        total, dataset = len(labeller.dataset_dicts), labeller.dataset
        logger.info(f"{count} of {total} images of {dataset} labelled in {store.root}")
        if count < total:
            logger.warning(f"{total - count} images are missing; re-run to finish")
    return stats
