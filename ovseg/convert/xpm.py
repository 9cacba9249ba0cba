# Follows the official XPM checkpoints' names (hbdat/cvpr22_cross_modal_pseudo_labeling
# @b460423, maskrcnn_benchmark: modeling/detector/generalized_rcnn.py, st_generalized_rcnn.py,
# backbone/backbone.py, backbone/resnet.py, layers/batch_norm.py, rpn/rpn.py,
# rpn/anchor_generator.py, roi_heads/roi_heads.py, roi_heads/box_head/*, roi_heads/mask_head/*,
# language_backbone/transformers.py), re-written.
"""Official XPM checkpoints (maskrcnn_benchmark ``{"model": ...}``) into ovseg's XPM models.

Two releases: the COCO teacher (``GeneralizedRCNN``) converts into ``XPMTeacher``, the COCO
student (``STGeneralizedRCNN``) into ``XPMStudent``; both need MODEL.XPM.CLASS_EMBEDDING
"bert" (the projection ``emb_pred`` maps into BERT's 768-wide word-embedding space). What an
official checkpoint holds, and what becomes of it:

- ``backbone.body.{stem, layer1-3}`` (R-50-C4 body, ``backbone.py:12-18``, ``resnet.py``):
  ``stem.conv1``/``bn1`` -> ``backbone.stem.conv1``/``.norm``; ``layer<i>.<b>.conv<j>``/
  ``bn<j>`` -> ``backbone.res<i+1>.<b>.conv<j>``/``.norm``; ``downsample.0``/``.1`` ->
  ``shortcut``/``.norm`` (FrozenBatchNorm2d's four buffers, ``batch_norm.py:12-17``). The
  stem's input channels are reversed: the official network reads BGR (``TO_BGR255``,
  ``config/defaults.py:66``), ovseg feeds RGB.
- ``rpn.head.{conv, cls_logits, bbox_pred}`` -> ``proposal_generator.rpn_head.{conv,
  objectness_logits, anchor_deltas}``, anchors reordered: maskrcnn_benchmark enumerates
  aspect ratios outermost (``anchor_generator.py:234-243``), detectron2 sizes outermost.
  ``rpn.anchor_generator.cell_anchors.0`` (a buffer) is dropped, read for that order and
  compared with MODEL.ANCHOR_GENERATOR; MODEL.XPM.LEGACY_BOXES True makes these anchors
  (and maskrcnn_benchmark's other +1 conventions, :mod:`ovseg.modeling.xpm.legacy`).
- ``roi_heads.box.feature_extractor.head.layer4`` (res5 on the RoIs,
  ``roi_box_feature_extractors.py:28-40``) -> ``roi_heads.res5``; the mask head's copy
  (``roi_heads.mask.feature_extractor``, the same module: ``roi_heads.py:20-21``) is dropped
  after checking it equals the box head's.
- ``roi_heads.box.predictor.emb_pred`` -> ``roi_heads.box_predictor.projection``;
  ``bbox_pred`` (2 x 4 rows, class-agnostic: ``roi_box_predictors.py:24, 41``) -> its
  foreground rows 4-7, the only ones read (``box_head/inference.py:69-70``, ``loss.py``).
- ``roi_heads.mask.predictor.conv5_mask`` -> ``roi_heads.mask_head.deconv``;
  ``mask_fcn_logits`` (2 channels, class-agnostic: ``roi_mask_predictors.py:18-22``) -> its
  channel 1, the only one read (``mask_head/inference.py:49-50``); the student's
  ``uncertain_pred`` (``:26-27``) -> ``roi_heads.mask_head.noise.conv``.
- Student only: its evaluated heads are ``roi_heads_student`` (``st_generalized_rcnn.py:43,
  416``), converted as above; ``roi_heads`` (the frozen teacher copy that makes pseudo-labels
  during training, ``:42, 66-67``), ``bert.*`` (the frozen BERT, ``:44``; its word embeddings
  ``bert.embeddings`` are compared with MODEL.XPM.BERT_NAME's) and ``lambda_exemplar`` (the
  weight of caption exemplars, which the release never collects: ``update_exemplars`` is
  commented out, ``:325-326``) are dropped.

Refused, with the reason: a learned classifier (``cls_score``, not embedding-based) and
anything no rule knows.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import torch
from torch import Tensor

from ..modeling.xpm.legacy import official_cell_anchors
from .core import ConversionError, ConversionReport, Rule, TeacherCheck, apply_rules, require

__all__ = [
    "anchor_order",
    "body_rules",
    "check_bert",
    "convert_xpm",
    "fill_xpm",
    "official_cell_anchors",
    "release_notes",
    "stage_rules",
    "xpm_rules",
    "xpm_settings",
]

METHOD = "XPM"
_ANCHORS = "rpn.anchor_generator.cell_anchors.0"
_STUDENT = "roi_heads_student."
_NEEDED = {
    r"backbone\.stem\.conv1\.weight": "backbone.body.stem.conv1.weight",
    r"proposal_generator\.rpn_head\.objectness_logits\.weight": "rpn.head.cls_logits.weight",
    r"roi_heads\.box_predictor\.projection\.weight": "roi_heads.box.predictor.emb_pred.weight",
    r"roi_heads\.mask_head\.predictor\.weight": "roi_heads.mask.predictor.mask_fcn_logits.*",
}
# the pixel statistics of the official input (config/defaults.py:62-64, BGR), in RGB order
OFFICIAL_PIXEL_MEAN = (122.7717, 115.9465, 102.9801)
OFFICIAL_PIXEL_STD = (1.0, 1.0, 1.0)


def stage_rules(src: str, dst: str) -> List[Rule]:
    """A maskrcnn_benchmark bottleneck stage ``src`` -> detectron2's ``dst``."""
    norm = r"(weight|bias|running_mean|running_var)"
    return [
        Rule(src + r"\.(\d+)\.conv(\d)\.weight", dst + r".\1.conv\2.weight"),
        Rule(src + r"\.(\d+)\.bn(\d)\." + norm, dst + r".\1.conv\2.norm.\3"),
        Rule(src + r"\.(\d+)\.downsample\.0\.weight", dst + r".\1.shortcut.weight"),
        Rule(src + r"\.(\d+)\.downsample\.1\." + norm, dst + r".\1.shortcut.norm.\2"),
    ]


def body_rules() -> List[Rule]:
    """maskrcnn_benchmark's ``backbone.body.{stem, layer1-3}`` -> detectron2's ``backbone.{stem,
    res2-4}`` (the R-50-C4 body)."""
    rules = [
        Rule(r"backbone\.body\.stem\.conv1\.weight", "backbone.stem.conv1.weight"),
        Rule(r"backbone\.body\.stem\.bn1\.(.+)", r"backbone.stem.conv1.norm.\1"),
    ]
    for i in (1, 2, 3):
        rules += stage_rules(rf"backbone\.body\.layer{i}", f"backbone.res{i + 1}")
    return rules


def xpm_rules(student: bool) -> List[Rule]:
    """The rules of an official teacher (``student`` False) or student checkpoint."""
    heads = r"roi_heads_student\." if student else r"roi_heads\."
    rules = body_rules()
    rules += stage_rules(heads + r"box\.feature_extractor\.head\.layer4", "roi_heads.res5")
    rpn = {"conv": "conv", "cls_logits": "objectness_logits", "bbox_pred": "anchor_deltas"}
    rules += [
        Rule(rf"rpn\.head\.{old}\.(weight|bias)", rf"proposal_generator.rpn_head.{new}.\1")
        for old, new in rpn.items()
    ]
    box, mask = heads + r"box\.predictor\.", heads + r"mask\.predictor\."
    rules += [
        Rule(_re_escape(_ANCHORS), why="the RPN's anchors (a buffer; detectron2's anchor "
             "generator makes them from MODEL.ANCHOR_GENERATOR, compared with them)"),
        Rule(heads + r"mask\.feature_extractor\..+", why="the mask head's res5: the box "
             "head's module (SHARE_BOX_FEATURE_EXTRACTOR), saved twice; checked equal"),
        Rule(box + r"emb_pred\.(weight|bias)", r"roi_heads.box_predictor.projection.\1"),
        Rule(box + r"bbox_pred\.(weight|bias)", r"roi_heads.box_predictor.bbox_pred.\1"),
        Rule(mask + r"conv5_mask\.(weight|bias)", r"roi_heads.mask_head.deconv.\1"),
        Rule(mask + r"mask_fcn_logits\.(weight|bias)", r"roi_heads.mask_head.predictor.\1"),
        Rule(mask + r"uncertain_pred\.(weight|bias)", r"roi_heads.mask_head.noise.conv.\1"),
        Rule(box + r"cls_score\..+", refuse=True, why="a learned classifier (EMBEDDING_BASED "
             "False): ovseg's XPM scores class embeddings, this is no open-vocabulary model"),
    ]  # fmt: skip
    if student:
        rules += [
            Rule(r"roi_heads\..+", why="the frozen teacher's heads: they make pseudo-labels "
                 "during training only (ovseg's are made offline by the teacher checkpoint)"),
            Rule(r"bert\.embeddings", why="frozen BERT word embeddings (ovseg reads "
                 "MODEL.XPM.BERT_NAME's; compared with them)"),
            Rule(r"bert\.bert_model\..+", why="the frozen BERT's other layers (never run: "
                 "class embeddings are its input word embeddings)"),
            Rule(r"lambda_exemplar", why="weight of caption exemplars the release never "
                 "collects (update_exemplars is commented out)"),
        ]  # fmt: skip
    return rules


def _re_escape(key: str) -> str:
    return key.replace(".", r"\.")


def anchor_order(cell_anchors: Tensor) -> Tuple[List[int], int, int]:
    """Where each detectron2 anchor sits among the official ones.

    Args:
        cell_anchors (Tensor): (A, 4) the official cell anchors (inclusive x1, y1, x2, y2),
            aspect ratios outermost.

    Returns:
        (list[int], int, int): ``order`` (detectron2 anchor i is official ``order[i]``), the
        number of aspect ratios R and of sizes S.
    """
    w = cell_anchors[:, 2] - cell_anchors[:, 0] + 1
    h = cell_anchors[:, 3] - cell_anchors[:, 1] + 1
    ratios = [round(float(r), 2) for r in h / w]
    groups = list(dict.fromkeys(ratios))
    n_ratios = len(groups)
    n_sizes = len(ratios) // max(n_ratios, 1)
    expected = [g for g in groups for _ in range(n_sizes)]
    if n_ratios * n_sizes != len(ratios) or ratios != expected:
        raise ConversionError(
            f"{METHOD}: the official anchors {cell_anchors.tolist()} are not grouped by aspect "
            "ratio as maskrcnn_benchmark's generator makes them"
        )
    order = [r * n_sizes + s for s in range(n_sizes) for r in range(n_ratios)]
    return order, n_ratios, n_sizes


def _reorder_rpn(out: Dict[str, Tensor], order: List[int]) -> None:
    """The RPN head's per-anchor outputs in detectron2's anchor order."""
    idx = torch.as_tensor(order)
    head = "proposal_generator.rpn_head."
    for p in ("weight", "bias"):
        out[f"{head}objectness_logits.{p}"] = out[f"{head}objectness_logits.{p}"][idx]
        deltas = out[f"{head}anchor_deltas.{p}"]
        grouped = deltas.reshape(len(order), 4, *deltas.shape[1:])[idx]
        out[f"{head}anchor_deltas.{p}"] = grouped.reshape(deltas.shape)


def _check_shared_res5(state: Mapping[str, Tensor], heads: str) -> None:
    box, mask = heads + "box.feature_extractor.", heads + "mask.feature_extractor."
    differ = [
        k
        for k in state
        if k.startswith(mask)
        and not torch.equal(state[k], state.get(box + k[len(mask) :], torch.empty(0)))
    ]
    if differ:
        raise ConversionError(
            f"{METHOD}: the mask head's res5 differs from the box head's ({differ[:5]}); the "
            "official heads share one (SHARE_BOX_FEATURE_EXTRACTOR True), ovseg's too"
        )


def _foreground_rows(out: Dict[str, Tensor], report: ConversionReport) -> None:
    """The foreground rows of the class-agnostic box and mask predictors (2 classes each)."""
    rows = {"roi_heads.box_predictor.bbox_pred.": (8, slice(4, 8)),
            "roi_heads.mask_head.predictor.": (2, slice(1, 2))}  # fmt: skip
    for prefix, (n, keep) in rows.items():
        for p in ("weight", "bias"):
            t = out[prefix + p]
            if t.shape[0] != n:
                raise ConversionError(
                    f"{METHOD}: {prefix}{p} has {t.shape[0]} rows, not the {n} of a "
                    "class-agnostic head (CLS_AGNOSTIC_BBOX_REG / CLS_AGNOSTIC_MASK True)"
                )
            out[prefix + p] = t[keep]
    report.info.append(
        "class-agnostic box and mask predictors: their foreground rows kept (bbox_pred 4-7, "
        "mask_fcn_logits channel 1), the untrained background rows left out"
    )


def convert_xpm(state: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """An official XPM teacher or student state dict -> ovseg's, and the account of every
    tensor (see the module doc).

    Raises:
        ConversionError: naming keys ovseg has no place for, or missing parts.
    """
    student = any(k.startswith(_STUDENT) for k in state)
    report = ConversionReport(METHOD)
    heads = _STUDENT if student else "roi_heads."
    if _ANCHORS not in state:
        raise ConversionError(f"{METHOD}: the checkpoint lacks {_ANCHORS}; is it XPM's?")
    out = apply_rules(dict(state), xpm_rules(student), report)
    require(out, _NEEDED, METHOD)
    _check_shared_res5(state, heads)
    order, n_ratios, n_sizes = anchor_order(state[_ANCHORS].float())
    _reorder_rpn(out, order)
    _foreground_rows(out, report)
    stem = out["backbone.stem.conv1.weight"]
    out["backbone.stem.conv1.weight"] = stem.flip(1)
    report.info += [
        f"the {'student (STGeneralizedRCNN)' if student else 'teacher (GeneralizedRCNN)'}, "
        f"its classes projected to {out['roi_heads.box_predictor.projection.weight'].shape[0]}"
        " wide BERT word embeddings",
        f"{n_sizes} anchor sizes x {n_ratios} aspect ratios, reordered sizes outermost",
        "stem conv1's input channels reversed (the official network reads BGR images)",
    ]
    return out, report


def xpm_settings(cfg, model, converted: Mapping[str, Tensor], report: ConversionReport) -> None:
    """Refuse settings the official weights have no place in; note the ones under which they
    compute otherwise than the release (docs/reproduction.md "XPM")."""
    student = "roi_heads.mask_head.noise.conv.weight" in converted
    want = "XPMStudent" if student else "XPMTeacher"
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch != want:
        raise ConversionError(
            f"{METHOD}: the checkpoint is the official {'student' if student else 'teacher'}, "
            f"which converts into MODEL.META_ARCHITECTURE {want!r}, not {arch!r}"
            + (
                ""
                if student
                else " (a student starts from it: convert it with the teacher "
                "config, then give it as MODEL.XPM.TEACHER_WEIGHTS)"
            )
        )
    if cfg.MODEL.XPM.CLASS_EMBEDDING != "bert":
        raise ConversionError(
            f"{METHOD}: the official classifier projects RoIs into BERT's word-embedding "
            "space (EMB_DIM 768, EMB_KEY BertEmb); set MODEL.XPM.CLASS_EMBEDDING bert"
        )
    release_notes(cfg, report)
    if cfg.MODEL.XPM.LEGACY_BOXES:
        report.info.append(
            "MODEL.XPM.LEGACY_BOXES True: anchors, boxes, NMS, RoIAlign and mask paste as "
            "maskrcnn_benchmark's (+1 pixel, ovseg/modeling/xpm/legacy.py)"
        )
    else:
        report.notes.append(
            "MODEL.XPM.LEGACY_BOXES False: anchors, boxes, NMS, RoIAlign (ROI_BOX_HEAD."
            f"POOLER_TYPE {cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE!r}) and mask paste without "
            "maskrcnn_benchmark's +1 pixel conventions the release was trained with; set "
            "MODEL.XPM.LEGACY_BOXES True to evaluate it as released"
        )


def release_notes(cfg, report: ConversionReport) -> None:
    """Note the backbone and input settings under which maskrcnn_benchmark's weights (MSRA
    R-50, FrozenBN, BGR caffe statistics) compute otherwise than the release."""
    res = cfg.MODEL.RESNETS
    release = {
        "MODEL.RESNETS.STRIDE_IN_1X1": (res.STRIDE_IN_1X1, True),
        "MODEL.RESNETS.NORM": (res.NORM, "FrozenBN"),
        "MODEL.PIXEL_MEAN": (tuple(cfg.MODEL.PIXEL_MEAN), OFFICIAL_PIXEL_MEAN),
        "MODEL.PIXEL_STD": (tuple(cfg.MODEL.PIXEL_STD), OFFICIAL_PIXEL_STD),
    }
    for key, (value, official) in release.items():
        if value != official:
            report.notes.append(f"{key} {value!r}: the release computes with {official!r}")


def check_anchors(official: Mapping[str, Tensor], cfg, model, report: ConversionReport) -> None:
    """Refuse MODEL.ANCHOR_GENERATOR settings whose anchors, made the official way, are not
    the checkpoint's: its RPN outputs would belong to other anchors."""
    gen = cfg.MODEL.ANCHOR_GENERATOR
    stride = model.backbone.output_shape()[cfg.MODEL.RPN.IN_FEATURES[0]].stride
    sizes, ratios = gen.SIZES[0], gen.ASPECT_RATIOS[0]
    mine = official_cell_anchors(stride, sizes, ratios)
    theirs = official[_ANCHORS].float()
    if mine.shape != theirs.shape or not torch.allclose(mine, theirs, atol=1e-3):
        raise ConversionError(
            f"{METHOD}: MODEL.ANCHOR_GENERATOR.SIZES {list(sizes)} and ASPECT_RATIOS "
            f"{list(ratios)} (stride {stride}) are not the official anchors "
            f"{theirs.tolist()}; the release's are [[32, 64, 128, 256, 512]] and "
            "[[0.5, 1.0, 2.0]]"
        )
    report.info.append(f"anchors: sizes {list(sizes)}, aspect ratios {list(ratios)}")


def check_bert(
    official: Mapping[str, Tensor],
    model,
    names,
    report: ConversionReport,
    key: str = "bert.embeddings",
) -> None:
    """Compare the checkpoint's frozen BERT word embeddings ``key`` (a student's) with
    MODEL.XPM.BERT_NAME's (the class embeddings are made from them)."""
    if key not in official or model.bert is None:
        return
    theirs = official[key].float()
    mine = model.bert.table
    check = TeacherCheck(key, f"{model.bert.name} word embeddings", tol=1e-6)
    if mine.shape != theirs.shape:
        check.note = f"shape {tuple(mine.shape)} vs official {tuple(theirs.shape)}"
    else:
        check.diff = float((mine - theirs).abs().max())
        check.note = f"MODEL.XPM.BERT_NAME's, max |diff| {check.diff:.3g}"
    report.teacher.append(check)


def fill_xpm(key: str, mine: Tensor):
    """The student's state the release does not save."""
    if key == "roi_heads.mask_head.noise.frozen":
        return torch.tensor(True), "True: the release's noise head stopped learning at 10k"
    if key == "last_mean_sigma":
        return mine.clone(), "training state the release does not save: the initial value"
    return None
