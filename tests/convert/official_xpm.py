"""A state dict in the official XPM checkpoints' layout (maskrcnn_benchmark names, listed from
the official modules: R-50-C4 body ``backbone.body``, RPN ``rpn.head``, ``roi_heads.{box,mask}``
with res5 as ``feature_extractor.head.layer4``, the 2-row class-agnostic predictors; the
student's ``roi_heads_student``, ``bert`` and ``lambda_exemplar``) at a tiny config's widths,
random values."""

from __future__ import annotations

import torch

from ovseg.convert.xpm import OFFICIAL_PIXEL_MEAN, official_cell_anchors

BLOCKS = {1: 3, 2: 4, 3: 6, 4: 3}  # R-50 (backbone/resnet.py StageSpec "R-50-C4")


def official_opts(bert: str) -> list:
    """The release's settings at the tiny size (FrozenBN, MSRA strides, BGR caffe means, the
    stem and res2 frozen, BERT classes from ``bert``)."""
    return [
        "MODEL.RESNETS.NORM", "FrozenBN",
        "MODEL.BACKBONE.FREEZE_AT", "2",
        "MODEL.RESNETS.STRIDE_IN_1X1", "True",
        "MODEL.PIXEL_MEAN", str(list(OFFICIAL_PIXEL_MEAN)),
        "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]",
        "MODEL.XPM.CLASS_EMBEDDING", "bert",
        "MODEL.XPM.BERT_NAME", bert,
    ]  # fmt: skip


def _norm(state: dict, prefix: str, n: int, gen) -> None:
    """FrozenBatchNorm2d's four buffers (layers/batch_norm.py:12-17)."""
    state[prefix + "weight"] = 1 + 0.1 * torch.randn(n, generator=gen)
    state[prefix + "bias"] = 0.1 * torch.randn(n, generator=gen)
    state[prefix + "running_mean"] = 0.1 * torch.randn(n, generator=gen)
    state[prefix + "running_var"] = 0.5 + torch.rand(n, generator=gen)


def _conv(state: dict, key: str, shape, gen) -> None:
    fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
    state[key] = torch.randn(*shape, generator=gen) / fan_in**0.5


def _stage(state: dict, prefix: str, index: int, cfg, in_ch: int, gen) -> int:
    res = cfg.MODEL.RESNETS
    out = res.RES2_OUT_CHANNELS * 2 ** (index - 1)
    mid = res.WIDTH_PER_GROUP * res.NUM_GROUPS * 2 ** (index - 1)
    for b in range(BLOCKS[index]):
        p = f"{prefix}layer{index}.{b}."
        if b == 0:
            _conv(state, p + "downsample.0.weight", (out, in_ch, 1, 1), gen)
            _norm(state, p + "downsample.1.", out, gen)
        shapes = [(mid, in_ch if b == 0 else out, 1, 1), (mid, mid, 3, 3), (out, mid, 1, 1)]
        for j, shape in enumerate(shapes, 1):
            _conv(state, f"{p}conv{j}.weight", shape, gen)
            _norm(state, f"{p}bn{j}.", shape[0], gen)
    return out


def _heads(state: dict, prefix: str, cfg, c4: int, emb: int, student: bool, gen) -> None:
    res5: dict = {}
    c5 = _stage(res5, "", 4, cfg, c4, gen)
    for k, v in res5.items():  # one module under two names (roi_heads.py:20-21)
        state[f"{prefix}box.feature_extractor.head.{k}"] = v
        state[f"{prefix}mask.feature_extractor.head.{k}"] = v.clone()
    dim = cfg.MODEL.ROI_MASK_HEAD.CONV_DIM
    shapes = {
        "box.predictor.emb_pred.weight": (emb, c5),
        "box.predictor.emb_pred.bias": (emb,),
        "box.predictor.bbox_pred.weight": (8, c5),
        "box.predictor.bbox_pred.bias": (8,),
        "mask.predictor.conv5_mask.weight": (c5, dim, 2, 2),
        "mask.predictor.conv5_mask.bias": (dim,),
        "mask.predictor.mask_fcn_logits.weight": (2, dim, 1, 1),
        "mask.predictor.mask_fcn_logits.bias": (2,),
    }
    if student:  # MODEL.UNCERTAINTY True builds it in both heads (roi_mask_predictors.py:26-27)
        shapes["mask.predictor.uncertain_pred.weight"] = (1, dim, 1, 1)
        shapes["mask.predictor.uncertain_pred.bias"] = (1,)
    for k, shape in shapes.items():
        _conv(state, prefix + k, shape, gen)


def official_xpm_state(cfg, bert_table=None, student: bool = False, seed: int = 0) -> dict:
    """The official teacher's (or student's) state dict at ``cfg``'s widths; the student's
    ``bert.embeddings`` is ``bert_table``."""
    gen = torch.Generator().manual_seed(seed)
    state: dict = {}
    stem = cfg.MODEL.RESNETS.STEM_OUT_CHANNELS
    _conv(state, "backbone.body.stem.conv1.weight", (stem, 3, 7, 7), gen)
    _norm(state, "backbone.body.stem.bn1.", stem, gen)
    ch = stem
    for i in (1, 2, 3):
        ch = _stage(state, "backbone.body.", i, cfg, ch, gen)
    gen_cfg = cfg.MODEL.ANCHOR_GENERATOR
    anchors = official_cell_anchors(16, gen_cfg.SIZES[0], gen_cfg.ASPECT_RATIOS[0])
    state["rpn.anchor_generator.cell_anchors.0"] = anchors
    a = len(anchors)
    for k, shape in {"conv": (ch, ch, 3, 3), "cls_logits": (a, ch, 1, 1),
                     "bbox_pred": (4 * a, ch, 1, 1)}.items():  # fmt: skip
        _conv(state, f"rpn.head.{k}.weight", shape, gen)
        _conv(state, f"rpn.head.{k}.bias", shape[:1], gen)
    emb = 32 if bert_table is None else bert_table.shape[1]
    _heads(state, "roi_heads.", cfg, ch, emb, student, gen)
    if student:
        _heads(state, "roi_heads_student.", cfg, ch, emb, True, gen)
        state["bert.embeddings"] = bert_table.clone()
        state["bert.bert_model.embeddings.word_embeddings.weight"] = bert_table.clone()
        state["bert.bert_model.pooler.dense.weight"] = torch.randn(emb, emb, generator=gen)
        state["lambda_exemplar"] = torch.zeros(1)
    return state
