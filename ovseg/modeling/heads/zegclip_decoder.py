# Follows the official ZegCLIP decode head (ZiqinZhou66/ZegCLIP models/decode_heads/
# decode_seg.py, ATMSingleHeadSeg / TPN_DecoderLayer: relationship descriptor, masks from
# attention), re-written.
"""ZegCLIP's decoder: class queries from text and image, masks from their attention.

Each class's query is the relationship descriptor ``Linear([t * g ; t])`` of its text
embedding t and the image's global token g. A stack of post-norm decoder layers lets the
queries attend to the patch tokens; a layer's mask logits for class k at location n are
``mean over heads of (q_k . k_n) / sqrt(head_dim)``, the scaled attention logits before the
softmax. Every layer's masks are returned (deep supervision uses them all).

The last layer's attended queries feed nothing, so it holds only its query and key
projections (the official layer also carries value, output and FFN weights there, and
self-attention weights everywhere, that never receive a gradient).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DECODER_INITS", "ClassQueryAttention", "ClassQueryDecoderLayer", "ZegCLIPDecoder"]

DECODER_INITS = ("official", "trunc_normal", "clip")


class ClassQueryAttention(nn.Module):
    """Multi-head cross-attention that also returns its head-averaged attention logits."""

    def __init__(
        self, dim: int, num_heads: int = 8, attn_drop: float = 0.1, mask_only: bool = False
    ):
        """
        Args:
            dim (int): query/key width; a multiple of ``num_heads``.
            num_heads (int): attention heads.
            attn_drop (float): dropout on the attention weights (not on the returned logits).
            mask_only (bool): compute only the logits (no value/output projections).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"decoder width {dim} (the CLIP embedding dimension) is not divisible by "
                f"MODEL.ZEGCLIP.DECODER_HEADS={num_heads}"
            )
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.mask_only = mask_only
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        if not mask_only:
            self.v = nn.Linear(dim, dim)
            self.proj = nn.Linear(dim, dim)
            self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, query: Tensor, memory: Tensor) -> Tuple[Optional[Tensor], Tensor]:
        """
        Args:
            query (Tensor): (B, K, C) class queries.
            memory (Tensor): (B, N, C) patch tokens.

        Returns:
            tuple: attended queries (B, K, C) (None when ``mask_only``); attention logits
            (B, K, N), averaged over heads.
        """
        b, k, c = query.shape
        n, h = memory.shape[1], self.num_heads
        q = self.q(query).view(b, k, h, c // h).transpose(1, 2)
        key = self.k(memory).view(b, n, h, c // h).transpose(1, 2)
        logits = (q @ key.transpose(-2, -1)) * self.scale  # (B, h, K, N)
        if self.mask_only:
            return None, logits.mean(dim=1)
        v = self.v(memory).view(b, n, h, c // h).transpose(1, 2)
        attn = self.attn_drop(logits.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, k, c)
        return self.proj(out), logits.mean(dim=1)


class ClassQueryDecoderLayer(nn.Module):
    """Post-norm decoder layer: [self-attention], cross-attention to patches, FFN.

    The official layer skips self-attention among class queries (its parameters exist but
    are unused); ``self_attention=True`` adds it back. A ``mask_only`` layer stops at the
    cross-attention logits.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        self_attention: bool = False,
        mask_only: bool = False,
    ):
        super().__init__()
        self.mask_only = mask_only
        self.self_attn = (
            nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
            if self_attention
            else None
        )
        self.norm1 = nn.LayerNorm(dim) if self_attention else None
        self.dropout1 = nn.Dropout(dropout) if self_attention else None
        self.cross_attn = ClassQueryAttention(dim, num_heads, dropout, mask_only)
        if mask_only:
            return
        self.norm2 = nn.LayerNorm(dim)
        self.dropout2 = nn.Dropout(dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, query: Tensor, memory: Tensor) -> Tuple[Optional[Tensor], Tensor]:
        """(B, K, C) queries and (B, N, C) memory -> new queries (None when ``mask_only``),
        (B, K, N) mask logits."""
        if self.self_attn is not None:
            out = self.self_attn(query, query, query, need_weights=False)[0]
            query = self.norm1(query + self.dropout1(out))
        out, logits = self.cross_attn(query, memory)
        if self.mask_only:
            return None, logits
        query = self.norm2(query + self.dropout2(out))
        out = self.linear2(self.dropout(F.relu(self.linear1(query))))
        query = self.norm3(query + self.dropout3(out))
        return query, logits


class ZegCLIPDecoder(nn.Module):
    """Relationship descriptor + decoder layers -> per-layer mask logits."""

    def __init__(
        self,
        dim: int,
        *,
        num_layers: int = 3,
        num_heads: int = 8,
        ffn_ratio: int = 4,
        dropout: float = 0.1,
        self_attention: bool = False,
        init: str = "trunc_normal",
    ):
        """
        Args:
            dim (int): the CLIP joint-space dimension D (text, patch and global tokens).
            num_layers (int): decoder layers (paper: 3).
            num_heads (int): attention heads (official: 8).
            ffn_ratio (int): FFN width as a multiple of ``dim``.
            dropout (float): dropout in attention and FFN.
            self_attention (bool): add self-attention among class queries (official: none).
            init (str): "official": what the official run trains from, PyTorch's default
                init of every layer (its train.py:144-150 never calls the head's
                ``init_weights``) with every decoder layer a copy of the first
                (``nn.TransformerDecoder`` clones one layer); "trunc_normal": that
                ``init_weights`` (decode_seg.py:202-207: truncated normal 0.02, zero biases,
                independent layers); "clip": "trunc_normal", then the class query starts as
                the text embedding and every query/key projection as the identity, so the
                first mask logits are the patch-text cosine (scaled), CLIP's own similarity.
        """
        super().__init__()
        if init not in DECODER_INITS:
            raise ValueError(
                f"MODEL.ZEGCLIP.DECODER_INIT={init!r} is not one of {list(DECODER_INITS)}"
            )
        if num_layers < 1:
            raise ValueError(f"MODEL.ZEGCLIP.DECODER_LAYERS must be >= 1, got {num_layers}")
        self.q_proj = nn.Linear(2 * dim, dim)
        self.layers = nn.ModuleList(
            ClassQueryDecoderLayer(
                dim, num_heads, dim * ffn_ratio, dropout, self_attention, i == num_layers - 1
            )
            for i in range(num_layers)
        )
        if init == "official":
            self._copy_first_layer()
        else:
            self._init_weights()
        if init == "clip":
            self._init_from_clip(dim)

    @torch.no_grad()
    def _copy_first_layer(self) -> None:
        # the layers keep PyTorch's own init; each starts as the first (the mask-only last
        # layer takes the first's query and key projections)
        first = self.layers[0].state_dict()
        for layer in self.layers[1:]:
            layer.load_state_dict({k: first[k] for k in layer.state_dict()})

    @torch.no_grad()
    def _init_from_clip(self, dim: int) -> None:
        eye = torch.eye(dim)
        self.q_proj.weight.zero_()
        self.q_proj.weight[:, dim:] = eye  # [t * g ; t] -> t
        for layer in self.layers:
            layer.cross_attn.q.weight.copy_(eye)
            layer.cross_attn.k.weight.copy_(eye)

    def _init_weights(self) -> None:
        # the official head's init_weights: truncated normal linear weights, zero biases
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def relationship_descriptor(text: Tensor, global_token: Tensor) -> Tensor:
        """``[t * g ; t]`` for every class and image.

        Args:
            text (Tensor): (K, D) text embeddings.
            global_token (Tensor): (B, D) global image tokens.

        Returns:
            Tensor: (B, K, 2D).
        """
        t = text.unsqueeze(0).expand(global_token.shape[0], -1, -1)
        return torch.cat([t * global_token.unsqueeze(1), t], dim=-1)

    def forward(self, patch_tokens: Tensor, global_token: Tensor, text: Tensor) -> List[Tensor]:
        """
        Args:
            patch_tokens (Tensor): (B, D, h, w) L2-normalised patch tokens.
            global_token (Tensor): (B, D) L2-normalised global tokens.
            text (Tensor): (K, D) L2-normalised text embeddings.

        Returns:
            list[Tensor]: one (B, K, h, w) mask-logit map per layer, the last layer last.
        """
        b, d, h, w = patch_tokens.shape
        if text.dim() != 2 or text.shape[1] != d or global_token.shape != (b, d):
            raise ValueError(
                f"text {tuple(text.shape)}, global token {tuple(global_token.shape)} and patch "
                f"tokens {tuple(patch_tokens.shape)} must share the embedding dimension"
            )
        text = text.to(patch_tokens.dtype)
        query = self.q_proj(self.relationship_descriptor(text, global_token))
        memory = patch_tokens.flatten(2).transpose(1, 2)
        masks = []
        for layer in self.layers:
            query, logits = layer(query, memory)
            masks.append(logits.view(b, -1, h, w))
        return masks
