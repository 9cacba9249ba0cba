"""What builds XPM's detector from a config (:class:`~ovseg.modeling.meta_arch.xpm.XPMTeacher`
and the student): its backbone, RPN and RoI heads, the class embedding kind, the names it
never detects."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from torch import nn

from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_proposal_generator
from detectron2.modeling.roi_heads import Res5ROIHeads

from ...clip import CLIPTeacher
from ..xpm.bert import bert_width
from ..xpm.legacy_rpn import LegacyRPN
from ..xpm.roi_heads import XPMROIHeads

__all__ = [
    "build_xpm_parts",
    "check_pseudo_mask_refine",
    "class_embedding",
    "legacy_rpn",
    "stuff_names_by_dataset",
    "stuff_only_names",
]


def stuff_only_names(dataset_names: Sequence[str]) -> Tuple[str, ...]:
    """Classes of the datasets that are not things (an instance head never detects them);
    none for datasets whose metadata has no ``thing_classes``."""
    out: List[str] = []
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        things = meta.get("thing_classes", None)
        if things is None:
            continue
        out += [n for n in meta.get("stuff_classes", []) or [] if n not in set(things)]
    return tuple(dict.fromkeys(out))


def stuff_names_by_dataset(cfg) -> Tuple[Tuple[str, ...], Dict[str, Tuple[str, ...]]]:
    """The names the detector never detects: in training and for inputs of no known test set,
    the training sets' stuff classes (without training sets, the test sets'); for each test
    set, its own where it lists its things (a class one dataset calls stuff stays a
    detection of another that calls it a thing), else the training's."""
    default = stuff_only_names(cfg.DATASETS.TRAIN or cfg.DATASETS.TEST)
    own = {name: stuff_only_names([name]) for name in cfg.DATASETS.TEST}
    lists = {n: MetadataCatalog.get(n).get("thing_classes", None) for n in cfg.DATASETS.TEST}
    return default, {n: own[n] if lists[n] is not None else default for n in own}


def class_embedding(cfg) -> str:
    """MODEL.XPM.CLASS_EMBEDDING, checked: "clip" or "bert"."""
    kind = cfg.MODEL.XPM.CLASS_EMBEDDING
    if kind not in ("clip", "bert"):
        raise ValueError(
            f"MODEL.XPM.CLASS_EMBEDDING={kind!r} is not 'clip' (CLIP text, tau * cos) or "
            "'bert' (the official checkpoints' BERT word embeddings, raw dot product)"
        )
    return kind


def build_xpm_parts(cfg, teacher: Optional[CLIPTeacher], noise_head: bool) -> Dict[str, nn.Module]:
    """The detector of ``cfg``: backbone, RPN and XPM RoI heads (text width of ``teacher``,
    or of MODEL.XPM.BERT_NAME with the official BERT class embeddings; no teacher then)."""
    bert = class_embedding(cfg) == "bert"
    legacy = bool(cfg.MODEL.XPM.LEGACY_BOXES)
    backbone = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    shapes = backbone.output_shape()
    (in_feature,) = cfg.MODEL.ROI_HEADS.IN_FEATURES
    res5, res5_channels = Res5ROIHeads._build_res5_block(cfg)
    heads = cfg.MODEL.ROI_HEADS
    box = cfg.MODEL.ROI_BOX_HEAD
    roi_heads = XPMROIHeads(
        in_feature=in_feature,
        feature_stride=shapes[in_feature].stride,
        res5=res5,
        res5_channels=res5_channels,
        embed_dim=bert_width(cfg.MODEL.XPM.BERT_NAME) if bert else teacher.embed_dim,
        pooler_resolution=box.POOLER_RESOLUTION,
        pooler_type=box.POOLER_TYPE,
        batch_size_per_image=heads.BATCH_SIZE_PER_IMAGE,
        positive_fraction=heads.POSITIVE_FRACTION,
        iou_threshold=heads.IOU_THRESHOLDS[0],
        bbox_reg_weights=box.BBOX_REG_WEIGHTS,
        smooth_l1_beta=box.SMOOTH_L1_BETA,
        background_weight=cfg.MODEL.XPM.BACKGROUND_WEIGHT,
        mask_conv_dim=cfg.MODEL.ROI_MASK_HEAD.CONV_DIM,
        mask_predictor_std=cfg.MODEL.XPM.MASK_PREDICTOR_STD,
        noise_head=noise_head,
        score_thresh=heads.SCORE_THRESH_TEST,
        nms_thresh=heads.NMS_THRESH_TEST,
        detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        roi_align_max_pixels=cfg.MODEL.XPM.ROI_ALIGN_MATMUL_MAX_PIXELS,
        dot_product=bert,
        legacy_boxes=legacy,
    )
    return {
        "backbone": backbone,
        "proposal_generator": legacy_rpn(cfg, shapes)
        if legacy
        else build_proposal_generator(cfg, shapes),
        "roi_heads": roi_heads,
    }


def legacy_rpn(cfg, shapes) -> LegacyRPN:
    """The RPN of MODEL.XPM.LEGACY_BOXES: detectron2's, computing as maskrcnn_benchmark's."""
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    if name != "RPN":
        raise ValueError(
            f"MODEL.XPM.LEGACY_BOXES replaces detectron2's RPN; MODEL.PROPOSAL_GENERATOR.NAME "
            f"is {name!r} (set RPN, or LEGACY_BOXES False)"
        )
    return LegacyRPN(cfg, shapes)


def check_pseudo_mask_refine(cfg) -> bool:
    """MODEL.XPM.PSEUDO_MASK_REFINE, refused where it has no effect: only the teacher's own
    region embeddings compute the pseudo masks lazily, at the matched boxes."""
    refine = bool(cfg.MODEL.XPM.PSEUDO_MASK_REFINE)
    region = cfg.MODEL.XPM.REGION_EMBEDDING
    if refine and region != "teacher":
        raise ValueError(
            f"MODEL.XPM.PSEUDO_MASK_REFINE True needs MODEL.XPM.REGION_EMBEDDING 'teacher' (the "
            f"official matching, whose mask pass it follows); with {region!r} every proposal's "
            "mask is pasted at its own box: set PSEUDO_MASK_REFINE False"
        )
    return refine
