# Lists the official FreeSeg checkpoint's tensors (bytedance/FreeSeg @7707335:
# mask2former/open_vocabulary_model.py OpenVocabulary, heads/mask_former_interaction_head.py,
# heads/msdeformattn.py, heads/module.py, transformer/mask2former_transformer_predictor.py,
# transformer/open_transformer_predictor.py, clip_adapter/adapter.py, text_prompt.py),
# re-written as names and shapes.
"""An official FreeSeg ``model`` state dict, key for key with the official names and shapes
at a config's (tiny) widths, random values.

Built from the official module structure, not from ovseg's names: the backbone is
detectron2's (the official one is too), the CLIP the teacher's (open_clip names OpenAI's
tensors as the official CLIP does), everything else listed here.
"""

from __future__ import annotations

from typing import Dict

import open_clip
import torch
from torch import Tensor

from detectron2.modeling import build_backbone


def _linear(out: Dict[str, Tensor], name: str, n_out: int, n_in: int) -> None:
    out[f"{name}.weight"] = torch.empty(n_out, n_in)
    out[f"{name}.bias"] = torch.empty(n_out)


def _norm(out: Dict[str, Tensor], name: str, n: int) -> None:
    out[f"{name}.weight"] = torch.empty(n)
    out[f"{name}.bias"] = torch.empty(n)


def _pixel_decoder(out, cfg, channels: Dict[str, int]) -> None:
    """MSDeformAttnPixelDecoder (msdeformattn.py:165-292)."""
    head, p = cfg.MODEL.SEM_SEG_HEAD, "sem_seg_head.pixel_decoder."
    c, levels = head.CONVS_DIM, head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES
    for i, feature in enumerate(reversed(levels)):  # res5 first (:212-220)
        out[f"{p}input_proj.{i}.0.weight"] = torch.empty(c, channels[feature], 1, 1)
        out[f"{p}input_proj.{i}.0.bias"] = torch.empty(c)
        _norm(out, f"{p}input_proj.{i}.1", c)  # GroupNorm(32, conv_dim)
    out[f"{p}transformer.level_embed"] = torch.empty(len(levels), c)
    h, pts = (
        head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
        head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
    )
    ffn = head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD  # 1024 officially (:306)
    for e in range(head.TRANSFORMER_ENC_LAYERS):
        layer = f"{p}transformer.encoder.layers.{e}."
        _linear(out, layer + "self_attn.sampling_offsets", h * len(levels) * pts * 2, c)
        _linear(out, layer + "self_attn.attention_weights", h * len(levels) * pts, c)
        _linear(out, layer + "self_attn.value_proj", c, c)
        _linear(out, layer + "self_attn.output_proj", c, c)
        _norm(out, layer + "norm1", c)
        _linear(out, layer + "linear1", ffn, c)
        _linear(out, layer + "linear2", c, ffn)
        _norm(out, layer + "norm2", c)
    out[f"{p}mask_features.weight"] = torch.empty(head.MASK_DIM, c, 1, 1)
    out[f"{p}mask_features.bias"] = torch.empty(head.MASK_DIM)
    # one FPN level (stride 8 -> 4): detectron2 Conv2d with GN, no bias (:262-285)
    out[f"{p}adapter_1.weight"] = torch.empty(c, channels["res2"], 1, 1)
    _norm(out, f"{p}adapter_1.norm", c)
    out[f"{p}layer_1.weight"] = torch.empty(c, c, 3, 3)
    _norm(out, f"{p}layer_1.norm", c)


def _attention(out, name: str, d: int) -> None:
    out[f"{name}.in_proj_weight"] = torch.empty(3 * d, d)
    out[f"{name}.in_proj_bias"] = torch.empty(3 * d)
    _linear(out, f"{name}.out_proj", d, d)


def _predictor(out, cfg, text_dim: int) -> None:
    """OpenTransformerPredictor (mask2former_transformer_predictor.py:282-336 and
    open_transformer_predictor.py:46-53)."""
    mf, p = cfg.MODEL.MASK_FORMER, "sem_seg_head.predictor."
    d, ffn = mf.HIDDEN_DIM, mf.DIM_FEEDFORWARD
    for n in range(mf.DEC_LAYERS):
        _attention(out, f"{p}transformer_self_attention_layers.{n}.self_attn", d)
        _norm(out, f"{p}transformer_self_attention_layers.{n}.norm", d)
        _attention(out, f"{p}transformer_cross_attention_layers.{n}.multihead_attn", d)
        _norm(out, f"{p}transformer_cross_attention_layers.{n}.norm", d)
        _linear(out, f"{p}transformer_ffn_layers.{n}.linear1", ffn, d)
        _linear(out, f"{p}transformer_ffn_layers.{n}.linear2", d, ffn)
        _norm(out, f"{p}transformer_ffn_layers.{n}.norm", d)
    _norm(out, f"{p}decoder_norm", d)
    for name in ("query_feat", "query_embed"):
        out[f"{p}{name}.weight"] = torch.empty(mf.NUM_OBJECT_QUERIES, d)
    out[f"{p}level_embed.weight"] = torch.empty(3, d)
    # class_embed: MLP(hidden, EMBED_HIDDEN_DIM 1024 = 4 x 256, EMBEDDING_DIM 512, 2 layers)
    _linear(out, f"{p}class_embed.layers.0", 4 * d, d)
    _linear(out, f"{p}class_embed.layers.1", text_dim, 4 * d)
    for i, n_out in enumerate((d, d, cfg.MODEL.SEM_SEG_HEAD.MASK_DIM)):
        _linear(out, f"{p}mask_embed.layers.{i}", n_out, d)


def _interaction(out, cfg, text_dim: int) -> None:
    """ContextInteraction (module.py:7-33, 126-155), use_layer_scale True."""
    c, e = cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, cfg.MODEL.FREESEG.INTERACTION.EMBED_DIM
    p = "sem_seg_head.interaction."
    _norm(out, p + "layer_norm_q_1", c)
    _norm(out, p + "layer_norm_k_1", text_dim)
    _linear(out, p + "attn.q_proj", e, c)
    _linear(out, p + "attn.k_proj", e, text_dim)
    _linear(out, p + "attn.v_proj", e, text_dim)
    _linear(out, p + "attn.out_proj", c, e)
    out[p + "gamma"] = torch.empty(c)


def _clip_adapter(out, cfg, clip_state: Dict[str, Tensor]) -> None:
    """MaskFormerClipAdapter (adapter.py:10-121) and LearnablePromptExtractor
    (text_prompt.py:46-114)."""
    p, fs = "clip_adapter.", cfg.MODEL.FREESEG
    token = clip_state["token_embedding.weight"]
    width, text_dim = token.shape[1], clip_state["text_projection"].shape[-1]
    out[p + "non_object_embedding"] = torch.empty(1, text_dim)
    out[p + "prompt_learner.prefix_prompt"] = torch.empty(fs.NUM_CLASS_PROMPT_TOKENS, width)
    out[p + "prompt_learner.task_prompt"] = torch.empty(fs.NUM_TASK_PROMPT_TOKENS, width)
    ids = open_clip.tokenize(["X."])[0]
    for name, pos in (("start", 0), ("dot", 2), ("end", 3), ("pad", 4)):
        out[f"{p}prompt_learner.{name}_signal"] = token[int(ids[pos])][None].clone()
    out[p + "pixel_mean"] = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    out[p + "pixel_std"] = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    out.update({p + "clip_model." + k: v.clone() for k, v in clip_state.items()})


def official_freeseg_state(cfg, clip_state: Dict[str, Tensor], seed: int = 0) -> Dict[str, Tensor]:
    """The official checkpoint's ``model`` dict at ``cfg``'s widths (random values; CLIP and
    its token-embedding signals copied from ``clip_state``).

    Args:
        cfg (CfgNode): a FreeSeg config (its backbone, pixel decoder, decoder, prompt widths).
        clip_state (dict): the teacher's ``model.state_dict()`` (OpenAI names).
    """
    out: Dict[str, Tensor] = {}
    backbone = build_backbone(cfg)
    out.update({"backbone." + k: v.clone() for k, v in backbone.state_dict().items()})
    channels = {k: s.channels for k, s in backbone.output_shape().items()}
    text_dim = clip_state["text_projection"].shape[-1]
    _pixel_decoder(out, cfg, channels)
    _predictor(out, cfg, text_dim)
    _interaction(out, cfg, text_dim)
    _clip_adapter(out, cfg, clip_state)
    num_classes = 156  # SEM_SEG_HEAD.NUM_CLASSES of the COCO config: SetCriterion's buffer
    out["criterion.empty_weight"] = torch.ones(num_classes + 1)
    gen = torch.Generator().manual_seed(seed)
    fixed = ("clip_adapter.clip_model.", "clip_adapter.pixel_", "criterion.")
    for key, value in out.items():  # random, except CLIP's and the constants
        if value.is_floating_point() and not key.startswith(fixed) and "_signal" not in key:
            value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
    return out
