# Follows the official ZegCLIP checkpoints' names (ZiqinZhou66/ZegCLIP @9ba4bb5:
# models/backbone/img_encoder.py VPTCLIPVisionTransformer, models/backbone/text_encoder.py
# CLIPTextEncoder, models/decode_heads/decode_seg.py ATMSingleHeadSeg), re-written.
"""Official ZegCLIP checkpoints (mmseg) into ovseg's ``ZegCLIP``.

What an official checkpoint holds, and what becomes of it:

- ``backbone.prompt_embeddings`` (1, n, C) and ``backbone.deep_prompt_embeddings``
  (L-1, n, C): one prompt set per block, concatenated into ``backbone.prompts`` (L, n, C);
  ``backbone.prompt_proj`` and ``backbone.prompt_norm`` keep their names.
- ``backbone.{conv1, class_embedding, positional_embedding, ln_pre, transformer, ln_post,
  proj}``: CLIP's frozen image tower (its positional embedding resized bilinearly to the
  training crop's grid); dropped, ovseg shares MODEL.CLIP's tower.
- ``text_encoder.*``: CLIP's frozen text tower (the official configs read the text
  embeddings from a .npy file instead); dropped, ovseg's classifier embeds with MODEL.CLIP.
- ``decode_head.q_proj`` (the relationship descriptor's projection) -> ``decoder.q_proj``;
  ``decode_head.decoder_1.layers.<i>.{multihead_attn.{q,k,v,proj}, norm2, linear1, linear2,
  norm3}`` -> ``decoder.layers.<i>.{cross_attn.{q,k,v,proj}, norm2, linear1, linear2,
  norm3}``. Dropped because the official forward never uses them: every layer's
  ``self_attn`` and ``norm1`` (the layer skips self-attention) and the last layer's
  ``v``, ``proj``, ``norm2``, ``linear1``, ``linear2``, ``norm3`` (only its attention logits
  are the masks; its attended queries feed nothing).
- ``decode_head.loss_decode.criterion.empty_weight``: a loss buffer; dropped.
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Tuple

import torch
from torch import Tensor

from .core import ConversionError, ConversionReport, Rule, apply_rules, require

__all__ = ["convert_zegclip", "zegclip_rules", "zegclip_settings"]

METHOD = "ZegCLIP"
_TOWER = r"conv1\.weight|class_embedding|ln_pre\..*|transformer\..*|ln_post\..*|proj"
_LAYER = r"decode_head\.decoder_1\.layers\.(\d+)\."
_FROZEN_IMAGE = "frozen CLIP image tower (ovseg shares MODEL.CLIP's)"
_FROZEN_TEXT = "frozen CLIP text tower (ovseg's classifier embeds with MODEL.CLIP)"
_NO_SELF_ATTN = "decoder self-attention and its norm: never used by the official layer"
_LAST_LAYER = "last decoder layer's value/output/FFN weights: its queries feed nothing"
# an ovseg key every ZegCLIP checkpoint gives -> the official keys it comes from
_NEEDED = {
    r"decoder\.q_proj\.weight": "decode_head.q_proj.weight",
    r"decoder\.layers\.0\.cross_attn\.q\.weight": "decode_head.decoder_1.layers.0.*",
    r"backbone\.prompt_proj\.weight": "backbone.prompt_proj.weight",
    r"backbone\.prompt_norm\.weight": "backbone.prompt_norm.weight",
}


def zegclip_rules(num_layers: int) -> List[Rule]:
    """The rules for an official decoder of ``num_layers`` layers (see the module doc)."""
    last = num_layers - 1
    return [
        Rule(r"backbone\.(prompt_proj|prompt_norm)\.(weight|bias)", r"backbone.\1.\2"),
        Rule(
            r"backbone\.positional_embedding",
            why=_FROZEN_IMAGE,
            teacher="visual.positional_embedding",
            form="resize_pos",
        ),
        Rule(rf"backbone\.({_TOWER})", why=_FROZEN_IMAGE, teacher=r"visual.\1"),
        Rule(r"text_encoder\.(.+)", why=_FROZEN_TEXT, teacher=r"\1"),
        Rule(r"decode_head\.q_proj\.(weight|bias)", r"decoder.q_proj.\1"),
        Rule(_LAYER + r"(self_attn\..+|norm1\.(weight|bias))", why=_NO_SELF_ATTN),
        Rule(
            rf"decode_head\.decoder_1\.layers\.{last}\."
            r"(multihead_attn\.(v|proj)|norm2|norm3|linear1|linear2)\.(weight|bias)",
            why=_LAST_LAYER,
        ),
        Rule(
            _LAYER + r"multihead_attn\.(q|k|v|proj)\.(weight|bias)",
            r"decoder.layers.\1.cross_attn.\2.\3",
        ),
        Rule(_LAYER + r"(norm2|norm3|linear1|linear2)\.(weight|bias)", r"decoder.layers.\1.\2.\3"),
        Rule(r"decode_head\.loss_decode\.criterion\.empty_weight", why="loss buffer (unused)"),
        Rule(
            r"decode_head\.(input_proj|proj_norm)_\d+\..+",
            refuse=True,
            why="an input projection of the patch tokens (official use_proj=True): ovseg's "
            "decoder reads them as they are (every official config sets use_proj=False)",
        ),
        Rule(
            r"decode_head\.decoder_\d+\..+",
            refuse=True,
            why="a second decoder stage (official use_stages > 1): ovseg's decoder has one",
        ),
    ]


def _indices(state: Mapping[str, Tensor], pattern: str) -> List[int]:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return sorted(found)


def _merge_prompts(state: Dict[str, Tensor], report: ConversionReport) -> Tensor:
    """Pop the official prompt sets and return ovseg's (L, n, C) ``backbone.prompts``."""
    first = state.pop("backbone.prompt_embeddings", None)
    deep = state.pop("backbone.deep_prompt_embeddings", None)
    if first is None or deep is None:
        lacks = "backbone.prompt_embeddings" if first is None else ""
        lacks = lacks or "backbone.deep_prompt_embeddings"
        raise ConversionError(
            f"{METHOD}: ovseg converts VPT-deep prompts (official total_d_layer > 0: "
            f"backbone.prompt_embeddings and deep_prompt_embeddings); this checkpoint lacks "
            f"{lacks} (shallow prompts officially skip prompt_norm; reverse-deep ones start "
            "late: neither is ovseg's prompted backbone)"
        )
    blocks = _indices(state, r"backbone\.transformer\.resblocks\.(\d+)\.")
    if blocks and deep.shape[0] != len(blocks) - 1:
        raise ConversionError(
            f"{METHOD}: deep prompts for {deep.shape[0]} of the {len(blocks) - 1} blocks after "
            "the first (official total_d_layer); ovseg's deep prompts enter every block"
        )
    if first.shape[1:] != deep.shape[1:]:
        raise ConversionError(
            f"{METHOD}: prompt_embeddings {tuple(first.shape)} and deep_prompt_embeddings "
            f"{tuple(deep.shape)} differ in tokens or width"
        )
    report.used["backbone.prompt_embeddings"] = "backbone.prompts"
    report.used["backbone.deep_prompt_embeddings"] = "backbone.prompts"
    return torch.cat([first.reshape(1, *first.shape[-2:]), deep], dim=0)


def convert_zegclip(state: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """An official ZegCLIP state dict -> ovseg's, and the account of every tensor.

    Args:
        state (Mapping[str, Tensor]): the official ``state_dict``.

    Returns:
        tuple: the ovseg state dict (prompts and decoder), the :class:`ConversionReport`.

    Raises:
        ConversionError: naming keys ovseg has no place for, or missing parts.
    """
    report = ConversionReport(METHOD)
    state = dict(state)
    prompts = _merge_prompts(state, report)
    layers = _indices(state, _LAYER)
    if not layers:
        raise ConversionError(f"{METHOD}: no decoder layers (decode_head.decoder_1.layers.*)")
    out = apply_rules(state, zegclip_rules(layers[-1] + 1), report)
    out["backbone.prompts"] = prompts
    require(out, _NEEDED, METHOD)
    report.info.append(
        f"{prompts.shape[1]} prompt tokens before each of {prompts.shape[0]} blocks, "
        f"{layers[-1] + 1} decoder layers (MODEL.ZEGCLIP.NUM_PROMPTS, DECODER_LAYERS)"
    )
    return out, report


def zegclip_settings(cfg, model, converted: Mapping[str, Tensor], report: ConversionReport) -> None:
    """Refuse settings that leave no place for the official weights (with the key to set);
    note settings under which the converted weights compute otherwise than the official model.

    Args:
        cfg (CfgNode): the config the model was built from.
        model (nn.Module): the built ovseg ZegCLIP.
        converted (Mapping[str, Tensor]): the converted tensors.
        report (ConversionReport): gets the notes.
    """
    z = cfg.MODEL.ZEGCLIP
    wrong = []
    if z.DECODER_SELF_ATTENTION:
        wrong.append("MODEL.ZEGCLIP.DECODER_SELF_ATTENTION must be False (the official layer "
                     "never runs self-attention among the class queries)")  # fmt: skip
    if z.PROMPT_DEPTH != "deep" or not z.PROMPT_PROJ:
        wrong.append("MODEL.ZEGCLIP.PROMPT_DEPTH must be 'deep' and PROMPT_PROJ True "
                     "(official VPT-deep prompts through prompt_proj)")  # fmt: skip
    if wrong:
        raise ConversionError(f"{METHOD}: " + "; ".join(wrong))
    official = {
        "DOUBLE_CLASS_EMBEDDING": (True, "the class token gets the class embedding twice"),
        "POS_EMBED_INTERPOLATION": ("bilinear", "positional embeddings resized bilinearly"),
        "PATCH_STRIDE": (0, "non-overlapping patches"),
    }
    for key, (value, what) in official.items():
        if z[key] != value:
            report.notes.append(
                f"MODEL.ZEGCLIP.{key} {z[key]!r}: the official model has {value!r} ({what})"
            )
    mean = [round(float(v), 3) for v in model.pixel_mean.flatten()]
    if mean != [123.675, 116.28, 103.53]:
        report.notes.append(
            f"the model normalises images with mean {mean}; the official pipeline uses "
            "ImageNet's (MODEL.ZEGCLIP.PIXEL_STATISTICS 'imagenet')"
        )
