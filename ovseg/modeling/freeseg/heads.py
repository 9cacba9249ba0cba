# Follows the official FreeSeg ContextInteraction / MultiHeadAttention (mask2former/modeling/
# heads/module.py:7-184) and MaskFormerClipAdapter's no-object logits (clip_adapter/
# adapter.py:65-98, 186-192), re-written.
"""FreeSeg's text/visual interaction head and its cosine class head.

:class:`TextVisualInteraction`: every pixel feature map (the pixel decoder's multi-scale
maps and its mask features, 256-d) cross-attends to the text features of all classes plus
the no-object embedding (512-d). One attention is shared by all maps
(``module.py:168-179``); per map, with ``q`` the flattened map and ``k`` the text::

    q = LN_q(q)
    k = LN_k(k)                      # official: re-assigned, so map i sees LN_k applied i+1 times
    q = q + gamma * MHA(q, k, k)     # the residual adds to the *normalised* q

:class:`TextClassHead`: logits = 100 * cos(query embedding, [text_1..C; no-object]) with the
no-object vector learned and L2-normalised.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TextAttention", "TextClassHead", "TextVisualInteraction"]


class TextAttention(nn.Module):
    """Multi-head attention from ``q_dim`` queries to ``k_dim`` keys/values through an
    ``embed_dim`` space (``module.py:7-122``: xavier-uniform projections, zero biases, dropout
    on the attention probabilities)."""

    def __init__(self, q_dim: int, k_dim: int, embed_dim: int, num_heads: int, dropout: float):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        self.q_proj = nn.Linear(q_dim, embed_dim)
        self.k_proj = nn.Linear(k_dim, embed_dim)
        self.v_proj = nn.Linear(k_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, q_dim)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(B, Nq, q_dim), (B, Nk, k_dim), (B, Nk, k_dim) -> (B, Nq, q_dim)."""
        query = self._heads(self.q_proj(q) * self.head_dim**-0.5)
        key, value = self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        attn = torch.softmax(query @ key.transpose(-1, -2), dim=-1)
        attn = F.dropout(attn, p=self.dropout, training=self.training)
        out = (attn @ value).transpose(1, 2).flatten(2)
        return self.out_proj(out)


class TextVisualInteraction(nn.Module):
    """One cross-attention shared by every pixel feature map, queries = pixels, keys and
    values = text features (see the module docstring)."""

    def __init__(
        self,
        *,
        q_dim: int = 256,
        k_dim: int = 512,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.1,
        layer_scale_init: float = 0.1,
        use_layer_scale: bool = True,
        stacked_key_norm: bool = True,
    ):
        """
        Args:
            q_dim (int): channels of the pixel maps (official EMB_SIZE 256).
            k_dim (int): text feature size (official PROMPT_DIM 512).
            embed_dim (int): attention width (official EMBED_DIM 2048).
            num_heads (int): attention heads (official 8).
            dropout (float): dropout on attention probabilities (official 0.1).
            layer_scale_init (float): initial value of the per-channel gamma (official 0.1).
            use_layer_scale (bool): scale the attention update by gamma (official True).
            stacked_key_norm (bool): map i's keys are LN_k applied i + 1 times, as the official
                loop re-assigns ``k = LN(k)`` (``module.py:172``); False normalises the text
                once for every map.
        """
        super().__init__()
        self.norm_q = nn.LayerNorm(q_dim)
        self.norm_k = nn.LayerNorm(k_dim)
        self.attn = TextAttention(q_dim, k_dim, embed_dim, num_heads, dropout)
        self.gamma = (
            nn.Parameter(torch.full((q_dim,), float(layer_scale_init))) if use_layer_scale else None
        )
        self.stacked_key_norm = bool(stacked_key_norm)

    def forward(self, maps: Sequence[Tensor], text: Tensor) -> List[Tensor]:
        """
        Args:
            maps: feature maps (B, q_dim, h_i, w_i); official order: the 3 multi-scale maps,
                then the mask features.
            text (Tensor): (K, k_dim) text features (the classes and the no-object row), or
                (B, K, k_dim).

        Returns:
            list[Tensor]: the updated maps, same shapes and order.
        """
        if not maps:
            raise ValueError("TextVisualInteraction needs at least one feature map")
        b = maps[0].shape[0]
        k = text.expand(b, *text.shape) if text.dim() == 2 else text
        if k.shape[0] != b:
            raise ValueError(f"text batch {k.shape[0]} does not match the maps' batch {b}")
        out = []
        base = k
        for x in maps:
            _, c, h, w = x.shape
            q = self.norm_q(x.flatten(2).transpose(1, 2))
            k = self.norm_k(k if self.stacked_key_norm else base)
            delta = self.attn(q, k, k)
            q = q + (self.gamma * delta if self.gamma is not None else delta)
            out.append(q.transpose(1, 2).reshape(b, c, h, w))
        return out


class TextClassHead(nn.Module):
    """Cosine logits of query embeddings against class texts and a learned no-object
    embedding: ``temperature * cos(e, [text_1..C; no_object])``."""

    def __init__(self, *, dim: int = 512, temperature: float = 100.0, init_std: float = 0.0):
        """
        Args:
            dim (int): the text/query embedding size.
            temperature (float): the logit scale (official 100, ``adapter.py:69``).
            init_std (float): std of the no-object embedding's normal init; 0 = the official
                ``text transformer width ** -0.5`` with width = ``dim`` (``adapter.py:95-98``;
                pass ``width ** -0.5`` when the widths differ).
        """
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.no_object = nn.Parameter(torch.empty(1, dim))
        nn.init.normal_(self.no_object, std=init_std or 1 / math.sqrt(dim))

    def text_with_no_object(self, text: Tensor) -> Tensor:
        """(C, D) class texts -> (C + 1, D): the normalised no-object row appended
        (``adapter.py:186-192``), the keys of :class:`TextVisualInteraction`."""
        no_object = F.normalize(self.no_object, dim=-1).to(text.dtype)
        return torch.cat([text, no_object], dim=0)

    def forward(self, queries: Tensor, text: Tensor) -> Tensor:
        """
        Args:
            queries (Tensor): (B, Q, D) query class embeddings (normalised here).
            text (Tensor): (C, D) L2-normalised class text features.

        Returns:
            Tensor: (B, Q, C + 1) logits, the last column no-object.
        """
        if queries.shape[-1] != text.shape[-1]:
            raise ValueError(
                f"query embeddings have {queries.shape[-1]} dims, text features {text.shape[-1]}"
            )
        keys = self.text_with_no_object(text)
        return self.temperature * F.normalize(queries, dim=-1) @ keys.t().to(queries.dtype)
