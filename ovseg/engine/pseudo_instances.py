"""XPM's caption pseudo instances into an instance store: the job
``tools/generate_pseudo_labels.py`` runs when the config's META_ARCHITECTURE is an XPM one.

The teacher (``MODEL.XPM.TEACHER_META_ARCHITECTURE``, weights ``MODEL.XPM.TEACHER_WEIGHTS``)
proposes boxes and masks through ``propose(batched_inputs) -> list[Instances]``; the CLIP
teacher (the model's own, else ``MODEL.CLIP``) embeds caption nouns and the proposals, or,
with BERT classes and REGION_EMBEDDING "teacher", the teacher's BERT embeds the nouns and
its own region embeddings are the proposals' (XPM's matching; CLIP is not used);
:class:`~ovseg.pseudo.PseudoInstanceLabeller` picks each noun's best proposal. The store is
fingerprinted by the teacher's weights, CLIP's, the labeller's settings, the vocabulary and
the dataset, so a store made otherwise is refused and a killed run resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

from torch import nn

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..clip.build import build_clip_teacher
from ..clip.templates import get_templates
from ..data import build_dataset_mapper
from ..data.captions.settings import (
    build_caption_matcher,
    matches_in_bert_space,
    xpm_store_vocabulary,
)
from ..pseudo import (
    InstancePseudoLabelStore,
    PseudoInstanceLabeller,
    build_manifest,
    find_teacher,
    generate_pseudo_instances,
    labeller_fingerprint,
    labeller_settings,
    open_store,
    teacher_weights_id,
)
from ..utils.config_keys import config_value
from ..utils.downloads import local_weights_problem
from .checkpoint import load_model_weights
from .checks import UnknownDatasetError, closest_datasets
from .labelling_errors import labelling_errors

__all__ = [
    "XPM_META_ARCHITECTURES",
    "InstanceLabeller",
    "bert_text_space",
    "build_instance_labeller",
    "instance_labeller_manifest",
    "main",
    "makes_instance_pseudo_labels",
    "proposal_settings",
]

logger = logging.getLogger("ovseg.tools.generate_pseudo_labels")

# meta-architectures whose configs make instance pseudo-labels (besides the teacher's own)
XPM_META_ARCHITECTURES = ("XPMTeacher", "XPMStudent")


def makes_instance_pseudo_labels(cfg: CfgNode) -> bool:
    """True when the config is an XPM one (its META_ARCHITECTURE is one of
    XPM_META_ARCHITECTURES or MODEL.XPM.TEACHER_META_ARCHITECTURE)."""
    name = cfg.MODEL.META_ARCHITECTURE
    return name in XPM_META_ARCHITECTURES or name == cfg.MODEL.XPM.TEACHER_META_ARCHITECTURE


@dataclass
class InstanceLabeller:
    """A config's XPM teacher and labeller, ready to label a dataset."""

    proposer: nn.Module  # in eval mode, with propose()
    labeller: PseudoInstanceLabeller
    mapper: Callable[[dict], dict]  # test mode
    dataset: str
    dataset_dicts: List[dict]
    unseen: List[str]
    weights: str


def _teacher_weights(cfg: CfgNode) -> str:
    xpm = cfg.MODEL.XPM
    if xpm.TEACHER_WEIGHTS:
        return xpm.TEACHER_WEIGHTS
    return cfg.MODEL.WEIGHTS if cfg.MODEL.META_ARCHITECTURE == xpm.TEACHER_META_ARCHITECTURE else ""


def build_proposer(cfg: CfgNode) -> nn.Module:
    """The teacher of MODEL.XPM.TEACHER_META_ARCHITECTURE with its weights, in eval mode."""
    teacher_cfg = cfg.clone()
    teacher_cfg.defrost()
    teacher_cfg.MODEL.META_ARCHITECTURE = cfg.MODEL.XPM.TEACHER_META_ARCHITECTURE
    seed_all_rng(max(int(cfg.SEED), 0))  # one random initialisation in every process
    model = build_model(teacher_cfg)
    if not callable(getattr(model, "propose", None)):
        raise TypeError(
            f"{type(model).__name__} (MODEL.XPM.TEACHER_META_ARCHITECTURE) has no "
            "propose(batched_inputs) -> list[Instances]; name the XPM teacher"
        )
    weights = _teacher_weights(cfg)
    what = local_weights_problem(weights)
    if what:
        key = "MODEL.XPM.TEACHER_WEIGHTS" if cfg.MODEL.XPM.TEACHER_WEIGHTS else "MODEL.WEIGHTS"
        raise FileNotFoundError(
            f"{key} {weights} {what} (from {os.getcwd()}); pass the XPM teacher's "
            "checkpoint, the model_final.pth of a run of its config"
        )
    if weights:
        load_model_weights(model, weights, cfg=teacher_cfg)
    else:
        logger.warning(
            "No MODEL.XPM.TEACHER_WEIGHTS: the proposals come from an untrained teacher; "
            "train it first (its config) and pass its checkpoint"
        )
    return model.eval()


def bert_text_space(cfg: CfgNode, proposer: nn.Module):
    """The teacher's BERT class embeddings when caption nouns are matched in its BERT space
    (MODEL.XPM.CLASS_EMBEDDING "bert" with REGION_EMBEDDING "teacher", XPM's own matching:
    st_generalized_rcnn.py:202-209, 226-255), else None (CLIP text; no CLIP is read for BERT).
    """
    if not matches_in_bert_space(cfg):
        return None
    bert = getattr(proposer, "bert", None)
    if bert is None:
        raise ValueError(
            f"MODEL.XPM.REGION_EMBEDDING 'teacher' with MODEL.XPM.CLASS_EMBEDDING 'bert' embeds "
            f"caption nouns with the teacher's BERT, which {type(proposer).__name__} "
            "(MODEL.XPM.TEACHER_META_ARCHITECTURE) does not have; name the XPM teacher, or "
            "match with CLIP ('crop' / 'pool')"
        )
    return bert


def build_instance_labeller(cfg: CfgNode, dataset: str = "") -> InstanceLabeller:
    """Build the XPM teacher, CLIP, the caption matcher and the test mapper of a config.

    Args:
        cfg (CfgNode): an XPM config.
        dataset (str): a registered dataset with captions; default DATASETS.TRAIN[0].
    """
    dataset = dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    if dataset not in DatasetCatalog.list():
        raise UnknownDatasetError(
            f"Dataset {dataset!r} is not registered; {closest_datasets(dataset)}; name a "
            "registered one with --dataset"
        )
    vocabulary, _ = xpm_store_vocabulary(cfg, dataset)  # the LVIS names with "lvis"
    names = vocabulary.names
    matcher = build_caption_matcher(cfg, names)
    proposer = build_proposer(cfg)
    bert = bert_text_space(cfg, proposer)
    clip = None if bert is not None else find_teacher(proposer) or build_clip_teacher(cfg)
    xpm = cfg.MODEL.XPM
    labeller = PseudoInstanceLabeller(
        clip,
        matcher,
        names,
        templates=get_templates(cfg.MODEL.CLIP.TEMPLATES),
        region_embedding=xpm.REGION_EMBEDDING,
        text=xpm.PSEUDO_TEXT,
        mask_threshold=xpm.PSEUDO_MASK_THRESHOLD,
        bert=bert,
    )
    return InstanceLabeller(
        proposer=proposer,
        labeller=labeller,
        mapper=build_dataset_mapper(cfg, False, dataset),
        dataset=dataset,
        dataset_dicts=DatasetCatalog.get(dataset),
        unseen=list(vocabulary.unseen),
        weights=_teacher_weights(cfg),
    )


# What decides the teacher's proposals besides its weights and the labeller's settings, with
# the value every store was made with before these entered the fingerprint (XPM's leaves and
# detectron2's defaults): a value equal to it is left out, so those stores keep their
# fingerprint; another value makes other proposals, so other labels and another fingerprint.
PROPOSAL_SETTINGS = {
    "propose_topk": ("MODEL.XPM.PROPOSE_TOPK", 100),
    "legacy_boxes": ("MODEL.XPM.LEGACY_BOXES", False),
    "rpn_pre_nms_topk_test": ("MODEL.RPN.PRE_NMS_TOPK_TEST", 6000),
    "rpn_post_nms_topk_test": ("MODEL.RPN.POST_NMS_TOPK_TEST", 1000),
    "rpn_nms_thresh": ("MODEL.RPN.NMS_THRESH", 0.7),
    "rpn_box_reg_weights": ("MODEL.RPN.BBOX_REG_WEIGHTS", [1.0, 1.0, 1.0, 1.0]),
    "rpn_min_size": ("MODEL.PROPOSAL_GENERATOR.MIN_SIZE", 0),
    "box_reg_weights": ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", [10.0, 10.0, 5.0, 5.0]),
    # where the mask head looks for a pseudo mask (the proposals' masks, not the proposals)
    "pseudo_mask_refine": ("MODEL.XPM.PSEUDO_MASK_REFINE", False),
}


def proposal_settings(cfg: CfgNode) -> Dict[str, Any]:
    """The :data:`PROPOSAL_SETTINGS` of ``cfg`` that differ from the values stores were made
    with before they were fingerprinted, e.g. ``{"propose_topk": 0}`` (every RPN proposal:
    other candidates than the top 100, other labels)."""
    out = {}
    for name, (key, before) in PROPOSAL_SETTINGS.items():
        node = config_value(cfg, key)
        value = list(node) if isinstance(node, (list, tuple)) else node
        if value != before:
            out[name] = value
    return out


def instance_labeller_manifest(
    cfg: CfgNode, job: InstanceLabeller, command: str = ""
) -> Dict[str, Any]:
    """The store manifest: fingerprint of (teacher weights, CLIP, settings), vocabulary,
    unseen names, score threshold and dataset; ``"caption_vocabulary": "lvis"`` for a store
    of XPM's LVIS vocabulary (absent: the training vocabulary's, as stores made before)."""
    settings = {
        **labeller_settings(cfg),
        "xpm": {**job.labeller.settings(), **proposal_settings(cfg)},
        "teacher_weights": teacher_weights_id(job.weights),
    }
    parts = {"proposer": job.proposer, "clip": job.labeller.clip}
    both = nn.ModuleDict({k: v for k, v in parts.items() if v is not None})  # BERT: no clip
    fingerprint, teacher = labeller_fingerprint(both, settings)
    manifest = build_manifest(
        fingerprint=fingerprint,
        teacher=teacher,
        vocabulary=job.labeller.vocabulary,
        unseen=job.unseen,
        threshold=job.labeller.score_threshold,
        dataset=job.dataset,
        command=command,
    )
    manifest.update(xpm_store_vocabulary(cfg, job.dataset)[1])
    return manifest


def main(cfg: CfgNode, args: argparse.Namespace) -> Dict[str, int]:
    """Label this process's share of the dataset into ``args.output`` (every process)."""
    job = build_instance_labeller(cfg, args.dataset)
    job.labeller.score_threshold = float(args.threshold)
    manifest = instance_labeller_manifest(cfg, job, args.command)
    store = open_store(args.output, manifest, InstancePseudoLabelStore)
    # the proposer, and a CLIP teacher of its own: what the memory settings act on
    clip = job.labeller.clip
    runs = nn.ModuleList([job.proposer, *([clip] if isinstance(clip, nn.Module) else [])])
    with labelling_errors(cfg, job.dataset, runs):
        stats = generate_pseudo_instances(
            job.proposer,
            job.labeller,
            job.dataset_dicts,
            job.mapper,
            store,
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
            progress=not args.no_progress,
        )
    if comm.is_main_process():
        count, total = store.finalize(), len(job.dataset_dicts)
        logger.info(f"{count} of {total} images of {job.dataset} labelled in {store.root}")
        meta = MetadataCatalog.get(job.dataset)
        if count < total:
            logger.warning(f"{total - count} images of {meta.name} are missing; re-run")
    return stats
