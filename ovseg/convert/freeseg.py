# Follows the official FreeSeg checkpoints' names (bytedance/FreeSeg @7707335:
# mask2former/open_vocabulary_model.py OpenVocabulary <- mask_former_model.py MaskFormer,
# modeling/heads/mask_former_interaction_head.py, heads/msdeformattn.py, heads/module.py,
# transformer/open_transformer_predictor.py, clip_adapter/adapter.py and text_prompt.py),
# re-written.
"""Official FreeSeg checkpoints (detectron2 ``{"model": ...}``) into ovseg's ``FreeSeg``.

What an official checkpoint holds (``OpenVocabulary``), and what becomes of it:

- ``backbone.*``: detectron2's ResNet with the DeepLab stem; the same names here.
- ``sem_seg_head.pixel_decoder.*`` (``MSDeformAttnPixelDecoder``, ``msdeformattn.py:165-292``)
  -> ``pixel_decoder.*``; its encoder ``transformer.encoder.layers.<i>`` (``:37``, ``:137``)
  -> ``pixel_decoder.transformer.layers.<i>``.
- ``sem_seg_head.predictor.*`` (``OpenTransformerPredictor``: Mask2Former's decoder plus the
  ``class_embed`` MLP to the text width, ``open_transformer_predictor.py:8-53``) ->
  ``decoder.*``.
- ``sem_seg_head.interaction.{layer_norm_q_1, layer_norm_k_1, attn.{q,k,v,out}_proj, gamma}``
  (``ContextInteraction``, ``module.py:126-155``) -> ``interaction.{norm_q, norm_k, attn.*,
  gamma}``.
- ``clip_adapter.non_object_embedding`` (``adapter.py:93``) -> ``no_object.no_object``.
- ``clip_adapter.prompt_learner.prefix_prompt`` (class context, ``text_prompt.py:52``) and
  ``task_prompt`` (``:57``) -> ``prompt.class_context`` / ``prompt.task_context``.
- ``clip_adapter.prompt_learner.{start,dot,end,pad}_signal``: CLIP's token embeddings of
  SOT, ".", EOT and padding (``text_prompt.py:101-112``); dropped, compared with MODEL.CLIP's
  ``token_embedding`` rows.
- ``clip_adapter.clip_model.*``: the frozen CLIP (``adapter.py:13``, ``clip.py:175-190``);
  dropped, compared with MODEL.CLIP's. ``clip_adapter.pixel_{mean,std}``: CLIP's constants.
- ``criterion.empty_weight``: a loss buffer; dropped.

Refused, with the reason: a suffix prompt (PROMPT_SHAPE (n, m > 0)), a separate region
adapter (SEPERATE_ADAPTER) and anything no rule knows.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import torch
from torch import Tensor

from .core import TEACHER_FORMS, ConversionReport, Rule, apply_rules, require

__all__ = ["convert_freeseg", "freeseg_rules", "freeseg_settings"]

METHOD = "FreeSeg"
_CLIP = "frozen CLIP (ovseg shares MODEL.CLIP's teacher)"
_SIGNAL = "CLIP token embedding of a prompt's fixed token (ovseg reads MODEL.CLIP's)"
_HEAD, _ADAPTER = r"sem_seg_head\.", r"clip_adapter\."
_NEEDED = {
    r"decoder\.class_embed\.layers\.0\.weight": "sem_seg_head.predictor.class_embed.*",
    r"pixel_decoder\.mask_features\.weight": "sem_seg_head.pixel_decoder.mask_features.*",
    r"interaction\.attn\.q_proj\.weight": "sem_seg_head.interaction.attn.q_proj.*",
    r"prompt\.class_context": "clip_adapter.prompt_learner.prefix_prompt",
    r"no_object\.no_object": "clip_adapter.non_object_embedding",
    r"backbone\.stem\.conv1\.weight": "backbone.stem.conv1.weight",
}
# token of "X." whose embedding each signal is (text_prompt.py:102-112: tokens 0, 2, 3, 4)
_SIGNAL_TOKENS = {"start": 0, "dot": 2, "end": 3, "pad": 4}


def _token_row(position: int):
    def form(token_embedding: Tensor, shape) -> Tensor:
        import open_clip

        token = int(open_clip.tokenize(["X."])[0][position])
        return token_embedding[token : token + 1]

    return form


for _name, _pos in _SIGNAL_TOKENS.items():
    TEACHER_FORMS[f"clip_token_{_name}"] = _token_row(_pos)


def freeseg_rules() -> List[Rule]:
    """The rules of an official FreeSeg checkpoint (see the module doc)."""
    interaction = {"layer_norm_q_1": "norm_q", "layer_norm_k_1": "norm_k"}
    rules = [
        Rule(r"backbone\.(.+)", r"backbone.\1"),
        Rule(
            _HEAD + r"pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.(.+)",
            r"pixel_decoder.transformer.layers.\1.\2",
        ),
        Rule(_HEAD + r"pixel_decoder\.(.+)", r"pixel_decoder.\1"),
        Rule(_HEAD + r"predictor\.(.+)", r"decoder.\1"),
    ]
    rules += [
        Rule(_HEAD + rf"interaction\.{old}\.(weight|bias)", rf"interaction.{new}.\1")
        for old, new in interaction.items()
    ]
    rules += [
        Rule(
            _HEAD + r"interaction\.attn\.(q|k|v|out)_proj\.(weight|bias)",
            r"interaction.attn.\1_proj.\2",
        ),
        Rule(_HEAD + r"interaction\.gamma", "interaction.gamma"),
        Rule(_ADAPTER + r"non_object_embedding", "no_object.no_object"),
        Rule(_ADAPTER + r"prompt_learner\.prefix_prompt", "prompt.class_context"),
        Rule(_ADAPTER + r"prompt_learner\.task_prompt", "prompt.task_context"),
    ]
    rules += [
        Rule(
            _ADAPTER + rf"prompt_learner\.{name}_signal",
            why=_SIGNAL,
            teacher="token_embedding.weight",
            form=f"clip_token_{name}",
        )
        for name in _SIGNAL_TOKENS
    ]
    return rules + [
        Rule(_ADAPTER + r"clip_model\.(.+)", why=_CLIP, teacher=r"\1"),
        Rule(_ADAPTER + r"pixel_(mean|std)", why="CLIP's pixel statistics (constants)"),
        Rule(r"criterion\.empty_weight", why="loss buffer (no-object weight of the CE)"),
        Rule(
            _ADAPTER + r"prompt_learner\.suffix_prompt",
            refuse=True,
            why="learnable tokens after the class name (PROMPT_SHAPE (n, m > 0)): ovseg's "
            "prompts have class context before the name only (every official config: (16, 0))",
        ),
        Rule(
            r"region_clip_adapter\..+",
            refuse=True,
            why="a second CLIP adapter for the region crops (SEPERATE_ADAPTER True): ovseg "
            "classifies crops with the main prompts (every official config: False)",
        ),
    ]


def convert_freeseg(state: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """An official FreeSeg state dict -> ovseg's, and the account of every tensor.

    Args:
        state (Mapping[str, Tensor]): the official ``model`` dict.

    Returns:
        tuple: the ovseg state dict, the :class:`ConversionReport`.

    Raises:
        ConversionError: naming keys ovseg has no place for, or missing parts.
    """
    report = ConversionReport(METHOD)
    out = apply_rules(dict(state), freeseg_rules(), report)
    require(out, _NEEDED, METHOD)
    layers = {k.split(".")[2] for k in out if k.startswith("decoder.transformer_ffn_layers.")}
    report.info.append(
        f"{len(layers)} decoder layers, {out['decoder.query_feat.weight'].shape[0]} queries, "
        f"{out['prompt.class_context'].shape[0]} class-context and "
        f"{out.get('prompt.task_context', torch.empty(0)).shape[0]} task tokens "
        "(MODEL.MASK_FORMER.DEC_LAYERS, NUM_OBJECT_QUERIES, MODEL.FREESEG.NUM_*_PROMPT_TOKENS)"
    )
    return out, report


def freeseg_settings(cfg, model, converted: Mapping[str, Tensor], report: ConversionReport) -> None:
    """Note settings under which the converted weights compute otherwise than the release
    (each has a switch that restores it; docs/reproduction.md "FreeSeg")."""
    fs, test = cfg.MODEL.FREESEG, cfg.MODEL.MASK_FORMER.TEST
    release = {
        "MODEL.FREESEG.INTERACTION.STACKED_KEY_NORM": (fs.INTERACTION.STACKED_KEY_NORM, True),
        "MODEL.FREESEG.PROMPT_CACHE_BY_TASK": (fs.PROMPT_CACHE_BY_TASK, False),
        "MODEL.MASK_FORMER.TEST.OFFICIAL_INSTANCE_DEFECTS": (test.OFFICIAL_INSTANCE_DEFECTS, True),
        "MODEL.MASK_FORMER.TEST.OFFICIAL_PANOPTIC_DROP": (test.OFFICIAL_PANOPTIC_DROP, True),
    }
    for key, (value, official) in release.items():
        if value != official:
            report.notes.append(f"{key} {value!r}: the release behaves as {official!r}")
