# Follows Mask2Former's MultiScaleMaskedTransformerDecoder
# (mask2former/modeling/transformer_decoder/mask2former_transformer_decoder.py; FreeSeg @7707335
# mask2former/modeling/transformer/{mask2former,open}_transformer_predictor.py), re-written.
"""Mask2Former's masked-attention transformer decoder with a pluggable class head.

Queries attend, level by level (lowest resolution first, round robin over 3 levels), only to
the pixels their previous prediction covers; after the learnable queries and after every
layer, a mask embedding is dotted with the mask features into mask logits and the class head
turns the query features into class logits. The class head is any module taking the
normalised query features (B, Q, hidden) (plus the keyword arguments given to ``forward``):
:class:`LinearClassHead` is Mask2Former's, :class:`TextCosineClassHead` is FreeSeg's
(an MLP to the text space, compared by cosine with the class text features).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import Conv2d

from .position_encoding import PositionEmbeddingSine

__all__ = ["MLP", "LinearClassHead", "MaskedAttentionDecoder", "TextCosineClassHead"]


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's FFN head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class LinearClassHead(nn.Linear):
    """Mask2Former's class head: one linear layer to C + 1 logits, the last for no object
    (FreeSeg mask2former_transformer_predictor.py:335); (B, Q, hidden) -> (B, Q, C + 1)."""

    def __init__(self, hidden_dim: int, num_classes: int):
        super().__init__(hidden_dim, num_classes + 1)


class TextCosineClassHead(MLP):
    """FreeSeg's class head: MLP 256 -> 1024 -> 512 (open_transformer_predictor.py:48-51),
    L2-normalised, times ``logit_scale`` (100) cosine with the class text features
    (open_vocabulary_model.py:214-216, adapter.py:65-74).

    Args:
        hidden_dim: query channels (256).
        embed_dim: text-embedding channels (512).
        embed_hidden_dim: the MLP's hidden width (1024).
        num_layers: MLP layers (2).
        logit_scale: the cosine multiplier (100).
    """

    def __init__(
        self,
        hidden_dim: int = 256,
        embed_dim: int = 512,
        embed_hidden_dim: int = 1024,
        num_layers: int = 2,
        logit_scale: float = 100.0,
    ):
        super().__init__(hidden_dim, embed_hidden_dim, embed_dim, num_layers)
        self.embed_dim = embed_dim
        self.logit_scale = logit_scale

    def forward(self, queries: Tensor, text_features: Tensor) -> Tensor:
        """Cosine logits against the given text features.

        Args:
            queries (Tensor): (B, Q, hidden).
            text_features (Tensor): (K, embed_dim), L2-normalised; FreeSeg gives the C class
                embeddings then the learned no-object embedding (K = C + 1).

        Returns:
            Tensor: (B, Q, K).
        """
        if text_features.dim() != 2 or text_features.shape[-1] != self.embed_dim:
            raise ValueError(
                f"text_features must be (K, {self.embed_dim}), got {tuple(text_features.shape)}"
            )
        emb = F.normalize(super().forward(queries), dim=-1)
        return self.logit_scale * emb @ text_features.t().to(emb)


class _AttnLayer(nn.Module):
    """Post-norm (or pre-norm) attention with a residual: cross- or self-attention
    (mask2former_transformer_predictor.py:16-134); dropout 0 as official."""

    def __init__(self, d_model: int, nhead: int, pre_norm: bool, attn_name: str):
        super().__init__()
        # the official attribute names ("self_attn" / "multihead_attn") keep checkpoints mapping
        self.attn_name = attn_name
        self.add_module(attn_name, nn.MultiheadAttention(d_model, nhead, dropout=0.0))
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt, memory, query_pos, pos, attn_mask=None):
        """tgt (Q, B, C); memory (S, B, C) or None for self-attention."""
        x = self.norm(tgt) if self.pre_norm else tgt
        mem = x if memory is None else memory
        key_pos = query_pos if memory is None else pos
        out = getattr(self, self.attn_name)(
            query=x + query_pos, key=mem + key_pos, value=mem, attn_mask=attn_mask
        )[0]
        tgt = tgt + out
        return tgt if self.pre_norm else self.norm(tgt)


class _FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, pre_norm: bool):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: Tensor) -> Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        tgt = tgt + self.linear2(F.relu(self.linear1(x)))
        return tgt if self.pre_norm else self.norm(tgt)


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former's masked-attention decoder.

    Args:
        in_channels: channels of the multi-scale maps (the pixel decoder's conv_dim).
        class_head: module mapping (B, Q, hidden_dim) query features (plus ``forward``'s
            keyword arguments) to (B, Q, K) class logits; None: no class logits.
        hidden_dim: query channels (256).
        num_queries: queries (100).
        nheads: attention heads (8).
        dim_feedforward: FFN width (2048).
        dec_layers: masked-attention layers (FreeSeg 10, open_transformer_predictor.py:75;
            Mask2Former builds DEC_LAYERS - 1, mask2former_transformer_predictor.py:357).
        pre_norm: pre-LayerNorm layers (False).
        mask_dim: channels of the mask features (256).
        enforce_input_project: project the maps even when in_channels == hidden_dim.
        num_feature_levels: levels read round robin (3).
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        class_head: Optional[nn.Module],
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool = False,
        num_feature_levels: int = 3,
    ):
        super().__init__()
        if dec_layers < 1:
            raise ValueError(f"dec_layers={dec_layers}: need at least one decoder layer")
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        # official attribute names, so official checkpoints map key for key
        self.transformer_cross_attention_layers = nn.ModuleList(
            _AttnLayer(hidden_dim, nheads, pre_norm, "multihead_attn") for _ in range(dec_layers)
        )
        self.transformer_self_attention_layers = nn.ModuleList(
            _AttnLayer(hidden_dim, nheads, pre_norm, "self_attn") for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            _FFNLayer(hidden_dim, dim_feedforward, pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.num_feature_levels = num_feature_levels
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                self.input_proj.append(Conv2d(in_channels, hidden_dim, kernel_size=1))
                weight_init.c2_xavier_fill(self.input_proj[-1])
            else:
                self.input_proj.append(nn.Identity())
        self.class_embed = class_head
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int, class_head: Optional[nn.Module]):
        mf = cfg.MODEL.MASK_FORMER
        return {
            "in_channels": in_channels,
            "class_head": class_head,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "dec_layers": mf.DEC_LAYERS,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
        }

    def forward(self, x: List[Tensor], mask_features: Tensor, **class_kwargs) -> Dict:
        """Decode the queries.

        Args:
            x (list[Tensor]): ``num_feature_levels`` maps (B, in_channels, H_l, W_l), lowest
                resolution first (the pixel decoder's multi-scale features).
            mask_features (Tensor): (B, mask_dim, H/4, W/4).
            class_kwargs: passed to the class head (e.g. ``text_features=``).

        Returns:
            dict: ``pred_masks`` (B, Q, H/4, W/4) mask logits, ``pred_logits`` (B, Q, K) (when
            there is a class head), ``query_features`` (B, Q, hidden) (normalised), each of
            the last layer, and ``aux_outputs``: a list of dec_layers such dicts, the
            learnable queries' predictions first, the second-to-last layer's last.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature maps, got {len(x)}")
        src, pos, sizes = [], [], []
        for i in range(self.num_feature_levels):
            sizes.append(x[i].shape[-2:])
            pos.append(self.pe_layer(x[i]).flatten(2).permute(2, 0, 1))
            proj = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(proj.permute(2, 0, 1))  # (HW, B, C)
        bs = src[0].shape[1]
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, bs, 1)
        preds = []
        pred, attn_mask = self._predict(output, mask_features, sizes[0], class_kwargs)
        preds.append(pred)
        for i in range(self.num_layers):
            lvl = i % self.num_feature_levels
            # a query whose mask covers nothing attends everywhere
            # (mask2former_transformer_predictor.py:400; as a mask, not torch.where's indices,
            # which wait for the device)
            attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
            output = self.transformer_cross_attention_layers[i](
                output, src[lvl], query_pos, pos[lvl], attn_mask
            )
            output = self.transformer_self_attention_layers[i](output, None, query_pos, None)
            output = self.transformer_ffn_layers[i](output)
            target = sizes[(i + 1) % self.num_feature_levels]
            pred, attn_mask = self._predict(output, mask_features, target, class_kwargs)
            preds.append(pred)
        out = dict(preds[-1])
        out["aux_outputs"] = preds[:-1]
        return out

    def _predict(
        self, output: Tensor, mask_features: Tensor, attn_size, class_kwargs
    ) -> Tuple[Dict[str, Tensor], Tensor]:
        """Masks and classes of the current queries, and the next layer's attention mask
        (mask2former_transformer_predictor.py:435-450)."""
        q = self.decoder_norm(output).transpose(0, 1)  # (B, Q, C)
        pred = {"query_features": q}
        if self.class_embed is not None:
            pred["pred_logits"] = self.class_embed(q, **class_kwargs)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), mask_features)
        pred["pred_masks"] = masks
        attn = F.interpolate(masks, size=attn_size, mode="bilinear", align_corners=False)
        # True = may not attend: pixels the predicted mask leaves out
        attn = (
            attn.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1)
            < 0.5
        )
        return pred, attn.detach()
