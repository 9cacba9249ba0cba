# Follows how the official XPM teacher starts from OVR-CNN's caption pre-training
# (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423: tools/train_net.py:79-86,
# maskrcnn_benchmark/utils/checkpoint.py:118-122, utils/model_serialization.py:10-89;
# the checkpoint's modules: alirezazareian/ovr-cnn @c904af7, configs/mmss_v07.yaml,
# maskrcnn_benchmark/modeling/detector/mmss_gcnn.py, mmss_heads/, language_backbone/),
# re-written.
"""OVR-CNN's caption-pretrained checkpoint into the starting MODEL.WEIGHTS of XPM's teacher.

The official teacher (``configs/coco_cap_det/zeroshot_mask.yaml:6-14, 30``) loads OVR-CNN's
image-caption pre-training (``MMSS-GCNN``, ``mmss_v07.yaml``; the file XPM's README.md:59
links, given as MODEL.WEIGHT by README.md:68) with ``BACKBONE_PREFIX "backbone.body."`` and
``LOAD_EMB_PRED_FROM_MMSS_HEAD True``: its checkpointer deletes the substring
``backbone.body.`` from every saved key and renames ``mmss_heads.GroundingHead.
v2l_projection`` to ``roi_heads.box.predictor.emb_pred`` (``utils/checkpoint.py:118-122``,
DEFAULT_HEAD ``config/defaults.py:140``), then gives each model key the longest renamed
saved key it ends with (``model_serialization.py:25-46``), the rest keeping their
initialisation (the strict load of ``:86-89`` loads the model's own state back). So:

- ``backbone.body.{stem, layer1-3}`` -> ``backbone.{stem, res2-4}`` (the R-50 body, as
  :mod:`.xpm` converts it; the stem's input channels reversed: both read BGR);
- ``backbone.body.layer4`` (the pre-training body is R-50-C5, ``mmss_v07.yaml:10``) ->
  ``roi_heads.res5``: its renamed keys ``layer4.*`` are suffixes of the teacher's RoI head
  ``roi_heads.{box,mask}.feature_extractor.head.layer4.*``, so res5 starts caption-pretrained,
  not from ImageNet;
- ``mmss_heads.GroundingHead.v2l_projection`` (2048 -> 768, ``grounding_head.py:46``) ->
  ``roi_heads.box_predictor.projection`` (the official ``emb_pred``).

Dropped: the frozen BERT ``language_backbone.body.*`` (never in the detector: its renamed
keys ``language_*`` end no teacher key; its word embeddings are compared with
MODEL.XPM.BERT_NAME's, where the class embeddings come from) and the multimodal transformer
``mmss_heads.TransformerHead.*`` (masked language modelling; its ``v2l_projection`` is the
grounding head's, tied, ``mmss_v07.yaml:25``; its ``backbone`` the BERT again). The RPN and the
box regression and mask predictors are not in the file: the model initialises them, as the
release does. A detector checkpoint (keys ``rpn.*`` / ``roi_heads.*``) is refused.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, List, Mapping, Optional, Tuple

from torch import Tensor

from .core import ConversionError, ConversionReport, Rule, apply_rules, require
from .xpm import body_rules, check_bert, release_notes, stage_rules

__all__ = ["check_ovrcnn_bert", "convert_ovrcnn", "fresh_ovrcnn", "ovrcnn_rules", "ovrcnn_settings"]

METHOD = "OVR-CNN"
_BERT = "language_backbone.body.embeddings"
_PROJECTION = "mmss_heads.GroundingHead.v2l_projection."
_NEEDED = {
    r"backbone\.stem\.conv1\.weight": "backbone.body.stem.conv1.weight",
    r"backbone\.res4\..+": "backbone.body.layer3.*",
    r"roi_heads\.res5\..+": "backbone.body.layer4.* (the R-50-C5 body of mmss_v07.yaml)",
    r"roi_heads\.box_predictor\.projection\.weight": _PROJECTION + "weight",
}
# the teacher's parts caption pre-training does not have: built fresh, as the release's
_FRESH = {
    "proposal_generator.": "the RPN (caption pre-training has none; the release builds it, "
    "rpn/rpn.py)",
    "roi_heads.box_predictor.bbox_pred.": "box regression (the release's FastRCNNPredictor "
    "initialises it, roi_box_predictors.py:41, 50-51)",
    "roi_heads.mask_head.": "the mask head (the release's MaskRCNNC4Predictor initialises it, "
    "mask_head/roi_mask_predictors.py)",
}


def ovrcnn_rules() -> List[Rule]:
    """What becomes of every tensor of OVR-CNN's caption-pretraining checkpoint."""
    return [
        *body_rules(),
        *stage_rules(r"backbone\.body\.layer4", "roi_heads.res5"),
        Rule(_PROJECTION.replace(".", r"\.") + r"(weight|bias)",
             r"roi_heads.box_predictor.projection.\1"),
        Rule(r"mmss_heads\.TransformerHead\.v2l_projection\..+", why="the transformer head's "
             "vision-to-language projection: the grounding head's, tied (TIE_VL_PROJECTION_"
             "WEIGHTS True); the release loads the grounding head's"),
        Rule(r"mmss_heads\.TransformerHead\.backbone\..+", why="the frozen BERT again (the "
             "transformer head holds the language backbone)"),
        Rule(r"mmss_heads\.TransformerHead\..+", why="caption pre-training's multimodal "
             "transformer (masked language modelling, image-caption matching): no part of "
             "the detector"),
        Rule(_BERT.replace(".", r"\."), why="frozen BERT word embeddings (ovseg reads "
             "MODEL.XPM.BERT_NAME's; compared with them)"),
        Rule(r"language_backbone\.body\..+", why="the frozen BERT (captions' encoder in "
             "pre-training; the detector's classes are BERT's input word embeddings)"),
    ]  # fmt: skip


def convert_ovrcnn(state: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """OVR-CNN's caption-pretraining state dict -> the XPM teacher's starting weights, and
    the account of every tensor (see the module doc).

    Raises:
        ConversionError: for a detector checkpoint, missing parts, or unknown keys.
    """
    detector = sorted(k for k in state if k.startswith(("rpn.", "roi_heads")))
    if detector:
        raise ConversionError(
            f"{METHOD}: the checkpoint holds a detector ({detector[:3]}...), not OVR-CNN's "
            "caption pre-training (MMSS-GCNN: backbone.body.*, language_backbone.*, "
            "mmss_heads.*); convert a trained XPM teacher or student with --method xpm"
        )
    report = ConversionReport(METHOD)
    out = apply_rules(dict(state), ovrcnn_rules(), report)
    require(out, _NEEDED, METHOD)
    out["backbone.stem.conv1.weight"] = out["backbone.stem.conv1.weight"].flip(1)
    width = out["roi_heads.box_predictor.projection.weight"].shape
    report.info += [
        "OVR-CNN caption pre-training (MMSS-GCNN, R-50-C5 body): stem and res2-4 into the "
        "backbone, layer4 into the RoI head's res5",
        f"the grounding head's vision-to-language projection ({width[1]} -> {width[0]}) as "
        "the box predictor's projection (LOAD_EMB_PRED_FROM_MMSS_HEAD)",
        "stem conv1's input channels reversed (the official network reads BGR images)",
    ]
    return out, report


def fresh_ovrcnn(key: str) -> Optional[str]:
    """Why the teacher initialises ``key`` itself, or None when the file should give it."""
    return next((why for prefix, why in _FRESH.items() if key.startswith(prefix)), None)


def ovrcnn_settings(cfg, model, converted, report: ConversionReport) -> None:
    """Refuse a teacher whose projection is not BERT-wide; note where the config trains
    otherwise than the official teacher (docs/reproduction.md "XPM")."""
    if cfg.MODEL.XPM.CLASS_EMBEDDING != "bert":
        raise ConversionError(
            f"{METHOD}: the pretrained projection maps regions into BERT's word-embedding "
            "space (EMB_KEY BertEmb); set MODEL.XPM.CLASS_EMBEDDING bert"
        )
    release_notes(cfg, report)
    official = {
        "MODEL.XPM.FREEZE_PROJECTION": (cfg.MODEL.XPM.FREEZE_PROJECTION, True),
        "MODEL.BACKBONE.FREEZE_AT": (cfg.MODEL.BACKBONE.FREEZE_AT, 2),
        "MODEL.XPM.LEGACY_BOXES": (cfg.MODEL.XPM.LEGACY_BOXES, True),
    }
    for key, (value, want) in official.items():
        if value != want:
            report.notes.append(f"{key} {value!r}: the official teacher trains with {want!r}")


# the pre-training's frozen BERT against MODEL.XPM.BERT_NAME's
check_ovrcnn_bert = partial(check_bert, key=_BERT)
