# Follows the official MaskCLIP+ checkpoints' names (chongzhou96/MaskCLIP @245d31f: mmseg
# ResNetV1c, decode_heads/maskclip_plus_head.py MaskClipPlusHead, decode_heads/aspp_headv2.py
# ASPPHeadV2, decode_heads/sep_aspp_head.py DepthwiseSeparableASPPHead,
# tools/maskclip_utils/convert_clip_weights.py for the CLIP names), re-written.
"""Official MaskCLIP+ checkpoints (mmseg) into ovseg's ``MaskCLIPPlus``.

What an official checkpoint holds, and what becomes of it:

- ``backbone.*``, mmseg's ResNetV1c (deep stem ``stem.{0,3,6}`` convolutions and
  ``stem.{1,4,7}`` norms; ``layer<n>.<j>.{conv,bn}<k>``; ``downsample.{0,1}``) -> ovseg's
  DeepLab ResNet (``stem.conv<k>[.norm]``, ``res<n+1>.<j>.conv<k>[.norm]``, ``shortcut``;
  the rules and checks are ``resnet_v1c``'s, shared with the ImageNet backbone conversion).
- ``decode_head.decode_module.aspp_modules.<i>.{conv,bn}`` (ASPPHeadV2's branches, summed,
  no 1x1 predictor) -> ``head.branches.<i>[.norm]`` of a ``DeepLabV2Head``; the DeepLabv3+
  decode module of the Context model (mmseg's DepthwiseSeparableASPPHead: ``image_pool``,
  ``aspp_modules``, ``bottleneck``, ``c1_bottleneck``, ``sep_bottleneck``) -> ovseg's
  ``DepthwiseSeparableASPPHead`` (``image_pool``, ``branches``, ``bottleneck``, ``projection``,
  ``fusion``), an mmcv ``ConvModule``'s ``conv``/``bn`` becoming ``weight``/``norm`` and a
  ``DepthwiseSeparableConvModule``'s ``depthwise_conv``/``pointwise_conv`` becoming
  ``depthwise``/``pointwise``. A model whose head still has a predictor gets the identity there.
- ``decode_head.bg_embeddings`` (the learnable background, ``cls_bg``) ->
  ``classifier.bg_embed.embedding``.
- ``decode_head.text_embeddings``: the fixed classifier; dropped (ovseg embeds the
  vocabulary with MODEL.CLIP; compared when a config is given).
- ``decode_head.clip.*`` and ``decode_head.{q,k,v,c}_proj`` (ResNet CLIP) or
  ``decode_head.proj`` (ViT CLIP): the frozen MaskCLIP teacher; dropped (MODEL.CLIP's).
- ``decode_head._iter_counter``: the training schedule's counter; dropped.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .core import ConversionError, ConversionReport, Rule, TeacherCheck, apply_rules, require
from .resnet_v1c import BN_STATE as _BN
from .resnet_v1c import check_resnet, resnet_notes, resnet_rules

__all__ = [
    "check_text",
    "convert_maskclip_plus",
    "fill_maskclip_plus",
    "maskclip_plus_rules",
    "maskclip_plus_settings",
]

METHOD = "MaskCLIP+"
_ASPP = r"decode_head\.decode_module\.aspp_modules\.(\d+)\."
_CLIP = "frozen MaskCLIP teacher (ovseg's is MODEL.CLIP)"
_MODULE = r"decode_head\.decode_module\."
# mmcv ConvModule / DepthwiseSeparableConvModule -> detectron2 Conv2d / DepthwiseSeparableConv2d
_SEPARABLE = r"(depthwise|pointwise)_conv\."
_NEEDED = {
    r"backbone\.stem\.conv1\.weight": "backbone.stem.0.weight (or backbone.conv1.weight)",
    r"backbone\.res5\.0\.conv1\.weight": "backbone.layer4.0.conv1.weight",
    r"head\.branches\.0\.weight": "decode_head.decode_module.aspp_modules.0.conv.weight",
}


def _clip(pattern: str, teacher: str, form: str = "same") -> Rule:
    """A dropped tensor of the head's frozen CLIP and the teacher's name for it."""
    return Rule(r"decode_head\." + pattern, why=_CLIP, teacher="visual." + teacher, form=form)


# (official name after "decode_head.", teacher name after "visual.", form): the official
# weight converter's names, ResNet (mmseg's deep stem: stem.{0,1,3,4,6,7}; downsample shifted
# by the average pool in front) and ViT (mmseg's VisionTransformer)
_TEACHER_TABLE = [
    *((rf"clip\.stem\.{i}\.(.+)", rf"{name}.\1", "same") for name, i in (
        ("conv1", 0), ("bn1", 1), ("conv2", 3), ("bn2", 4), ("conv3", 6), ("bn3", 7))),
    (r"clip\.(layer\d\.\d+)\.downsample\.1\.(.+)", r"\1.downsample.0.\2", "same"),
    (r"clip\.(layer\d\.\d+)\.downsample\.2\.(.+)", r"\1.downsample.1.\2", "same"),
    (r"clip\.(layer\d\..+)", r"\1", "same"),
    (r"([qkvc])_proj\.weight", r"attnpool.\1_proj.weight", "conv1x1"),
    (r"([qkvc])_proj\.bias", r"attnpool.\1_proj.bias", "same"),
    (r"proj\.weight", "proj", "proj_conv"),
    (r"clip\.cls_token", "class_embedding", "reshape"),
    (r"clip\.pos_embed", "positional_embedding", "reshape"),
    (r"clip\.patch_embed\.projection\.weight", "conv1.weight", "same"),
    (r"clip\.ln0\.(weight|bias)", r"ln_pre.\1", "same"),
    (r"clip\.ln1\.(weight|bias)", r"ln_post.\1", "same"),
    (r"clip\.layers\.(\d+)\.ln([12])\.(weight|bias)", r"transformer.resblocks.\1.ln_\2.\3", "same"),
    (r"clip\.layers\.(\d+)\.attn\.attn\.(.+)", r"transformer.resblocks.\1.attn.\2", "same"),
    (r"clip\.layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)",
     r"transformer.resblocks.\1.mlp.c_fc.\2", "same"),
    (r"clip\.layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)",
     r"transformer.resblocks.\1.mlp.c_proj.\2", "same"),
]  # fmt: skip


def _teacher_rules() -> List[Rule]:
    """The frozen CLIP inside clip-guided heads (see ``_TEACHER_TABLE``); its batch-norm
    update counters are dropped without a comparison."""
    counters = Rule(r"decode_head\.clip\..+num_batches_tracked", why=_CLIP)
    return [counters, *(_clip(*row) for row in _TEACHER_TABLE)]


def _conv_module(official: str, ovseg: str) -> List[Rule]:
    """An mmcv ConvModule (``conv``, ``bn``) -> a detectron2 Conv2d with norm; the official
    prefix may hold one group, ``\\1``."""
    groups = official.count("(")
    return [
        Rule(official + r"conv\.(weight|bias)", ovseg + rf"\{groups + 1}"),
        Rule(official + rf"bn\.{_BN}", ovseg + rf"norm.\{groups + 1}"),
    ]


def _separable_module(official: str, ovseg: str) -> List[Rule]:
    """An mmcv DepthwiseSeparableConvModule -> detectron2's DepthwiseSeparableConv2d."""
    groups = official.count("(")
    part = rf"\{groups + 1}"
    return _conv_module(official + _SEPARABLE, ovseg + part + ".")


def _head_rules() -> List[Rule]:
    """ASPPHeadV2 (DeepLabv2) -> DeepLabV2Head; mmseg's DepthwiseSeparableASPPHead
    (DeepLabv3+) -> ovseg's DepthwiseSeparableASPPHead, layer for layer."""
    aspp = _MODULE + r"aspp_modules\.(\d+)\."
    return [
        *_conv_module(aspp, r"head.branches.\1."),
        *_separable_module(aspp, r"head.branches.\1."),
        *_conv_module(_MODULE + r"image_pool\.1\.", "head.image_pool.1."),
        *_conv_module(_MODULE + r"bottleneck\.", "head.bottleneck."),
        *_conv_module(_MODULE + r"c1_bottleneck\.", "head.projection."),
        *_separable_module(_MODULE + r"sep_bottleneck\.(\d+)\.", r"head.fusion.\1."),
        Rule(
            _MODULE + ".+",
            refuse=True,
            why="a decode-module layer neither ASPPHeadV2 nor DepthwiseSeparableASPPHead has",
        ),
    ]


def maskclip_plus_rules() -> List[Rule]:
    """The rules (see the module doc)."""
    return [
        *resnet_rules(),
        *_head_rules(),
        Rule(r"decode_head\.bg_embeddings", "classifier.bg_embed.embedding"),
        Rule(
            r"decode_head\.text_embeddings",
            why="the classifier's text embeddings (ovseg embeds the vocabulary with MODEL.CLIP)",
        ),
        Rule(r"decode_head\._iter_counter", why="the training schedule's iteration counter"),
        *_teacher_rules(),
    ]


def convert_maskclip_plus(
    state: Mapping[str, Tensor],
) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """An official MaskCLIP+ state dict -> ovseg's, and the account of every tensor.

    Args:
        state (Mapping[str, Tensor]): the official ``state_dict``.

    Returns:
        tuple: the ovseg state dict (student and learnable background), the report.

    Raises:
        ConversionError: naming keys ovseg has no place for, or missing parts.
    """
    report = ConversionReport(METHOD)
    out = apply_rules(state, maskclip_plus_rules(), report)
    require(out, _NEEDED, METHOD)
    text = state.get("decode_head.text_embeddings")
    if text is not None:
        report.info.append(
            f"the official classifier holds {text.shape[0]} text embeddings of width "
            f"{text.shape[1]}" + (" and a learnable background first" if "classifier.bg_embed."
                                  "embedding" in out else "")
        )  # fmt: skip
    return out, report


def fill_maskclip_plus(key: str, like: Tensor) -> Optional[Tuple[Tensor, str]]:
    """The identity for a head predictor the official head does not have, else None.

    Args:
        key (str): an ovseg key the official checkpoint cannot give.
        like (Tensor): the model's tensor under that key.
    """
    if key == "head.predictor.weight" and like.dim() == 4 and like.shape[0] == like.shape[1]:
        eye = torch.eye(like.shape[0], dtype=like.dtype)[:, :, None, None]
        return eye, "identity 1x1 convolution (the official ASPP sum is the embedding)"
    if key == "head.predictor.bias":
        return torch.zeros_like(like), "zero (the official head has no predictor)"
    return None


def maskclip_plus_settings(
    cfg, model, converted: Mapping[str, Tensor], report: ConversionReport
) -> None:
    """Refuse a backbone or head the official weights do not fit (with the key to set); note
    settings under which the converted weights compute otherwise than the official model.

    Args:
        cfg (CfgNode): the config the model was built from.
        model (nn.Module): the built ovseg MaskCLIPPlus.
        converted (Mapping[str, Tensor]): the converted tensors.
        report (ConversionReport): gets the notes.
    """
    mc = cfg.MODEL.MASKCLIP_PLUS
    check_resnet(cfg, converted, METHOD)
    v3plus = any(k.startswith("head.image_pool.") for k in converted)
    head = "DepthwiseSeparableASPPHead" if v3plus else "DeepLabV2Head"
    if cfg.MODEL.DENSE_HEAD.NAME != head:
        raise ConversionError(
            f"{METHOD}: the official decode module is "
            f"{'DeepLabv3+' if v3plus else 'DeepLabv2 (ASPPHeadV2)'}: set MODEL.DENSE_HEAD.NAME "
            f"{head} (the config has {cfg.MODEL.DENSE_HEAD.NAME})"
        )
    notes = resnet_notes(cfg)
    if mc.NORMALIZE_EMBEDDINGS or float(cfg.MODEL.OVSEG.LOGIT_SCALE) != 1.0:
        notes.append("the official classifier is a raw dot product: MODEL.MASKCLIP_PLUS."
                     "NORMALIZE_EMBEDDINGS False and MODEL.OVSEG.LOGIT_SCALE 1.0")  # fmt: skip
    mean = [round(float(v), 3) for v in cfg.MODEL.PIXEL_MEAN]
    if mean != [123.675, 116.28, 103.53]:
        notes.append(f"MODEL.PIXEL_MEAN {mean}: the official pipeline uses ImageNet's")
    report.notes += notes


def check_text(official: Mapping[str, Tensor], model, names, report: ConversionReport) -> None:
    """Compare the official classifier with the model's text embeddings of ``names``.

    Args:
        official (Mapping[str, Tensor]): the official state dict.
        model (nn.Module): the ovseg MaskCLIPPlus (its ``text_embeddings``).
        names (Sequence[str]): the vocabulary in the official order, background included.
        report (ConversionReport): gets a :class:`TeacherCheck` (``diff``: 1 - the lowest
            cosine, tolerance 1e-3) or a note when the two cannot be compared.
    """
    text = official.get("decode_head.text_embeddings")
    if text is None or not names:
        return
    bg = model.classifier.bg_embed
    keep = [i for i, n in enumerate(names) if bg is None or n.strip().lower() != bg.name]
    if len(keep) != text.shape[0]:
        report.notes.append(
            f"text embeddings not compared: {text.shape[0]} official rows, {len(keep)} names"
        )
        return
    with torch.no_grad():
        mine = model.text_embeddings(list(names))[keep].float().cpu()
    ours = "MODEL.CLIP text of the vocabulary"
    if getattr(model.classifier, "from_file", False):
        ours = "the rows of MODEL.OVSEG.TEXT_EMBEDDINGS_FILE"
    check = TeacherCheck("decode_head.text_embeddings", ours)
    if mine.shape != text.shape:
        check.note = f"shape {tuple(mine.shape)} vs official {tuple(text.shape)}"
    else:
        cos = (F.normalize(mine, dim=-1) * F.normalize(text.float(), dim=-1)).sum(-1)
        check.diff, check.tol = float(1 - cos.min()), 1e-3
        check.note = f"lowest cosine {float(cos.min()):.5f} ({names[keep[int(cos.argmin())]]})"
    report.teacher.append(check)
