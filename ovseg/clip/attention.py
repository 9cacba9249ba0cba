"""Self-attention of open_clip's batch-first towers with its projections as single matrix
products, when gradients flow through it (training through a frozen tower's prompts, a
trained copy of the tower, prompt tuning through the text tower) and under autocast (a
frozen tower's inference: the CLIP teacher's labels, ZegCLIP's and MaskCLIP's test forward).

``nn.MultiheadAttention(batch_first=True)`` turns its (B, L, C) input sequence-first with a
transpose, a view, before the input projection. ``matmul`` folds a 3-D input into one
(B*L, C) @ (C, 3C) product only when that needs no copy, or when the input does not require
grad: a transposed input that requires grad is projected as a batched product over the L
tokens, each (B, C) @ (C, 3C) with the weight broadcast, and its backward likewise. On an H200
(ZegCLIP's VOC step, batch 16, 1025 + 10 tokens, bf16) those were cuBLAS's tall-skinny
kernels (``nvjet ... 384x16``): 24 calls per step taking 7.5 ms of its 55 ms of GPU time,
more than all of the tower's other matrix products together
(``docs/gpu/h200_2026-12-04_profile.txt``). Without grad, torch's fused inference path
(``_native_multi_head_attention``) projects the tokens as one product, but it refuses to run
under CUDA's autocast: a bf16 test forward of a frozen tower (weights that do not require
grad either) then took the batched product over the tokens in every block, as the training
step did. Here the input projection runs on the (B*L, C) tokens, attention in
``scaled_dot_product_attention`` and the output projection as torch's does: the same
operations and parameters, in another order of the same sums.

:func:`token_major_attention` switches a model's ``nn.MultiheadAttention`` modules (their
class, in place: parameters, state-dict keys and hooks unchanged). A call that is not
self-attention, or asks for the attention weights, a key-padding mask, a boolean mask or
``is_causal``, or runs without grad and without autocast on its device while torch's fused
inference path is on (``torch.backends.mha``), is torch's own.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TokenMajorMultiheadAttention", "split_qkv", "token_major_attention"]


class TokenMajorMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose batch-first self-attention under grad or autocast
    projects the tokens with one matrix product each way (see the module's docstring)."""

    def forward(  # noqa: D417 - torch's arguments
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        if not is_causal and self._token_major(
            query, key, value, key_padding_mask, need_weights, attn_mask
        ):
            return self._token_major_forward(query, attn_mask), None
        return super().forward(
            query,
            key,
            value,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )

    def _token_major(self, query, key, value, key_padding_mask, need_weights, attn_mask) -> bool:
        return (
            (
                torch.is_grad_enabled()
                or torch.is_autocast_enabled(query.device.type)
                or not torch.backends.mha.get_fastpath_enabled()
            )
            and self.batch_first
            and query is key
            and key is value
            and query.dim() == 3
            and not need_weights
            and key_padding_mask is None
            and (attn_mask is None or (attn_mask.dim() == 2 and attn_mask.is_floating_point()))
            and self._qkv_same_embed_dim
            and self.in_proj_weight is not None
            and self.bias_k is None
            and not self.add_zero_attn
        )

    def _token_major_forward(self, x: Tensor, attn_mask: Optional[Tensor]) -> Tensor:
        b, length, width = x.shape
        heads = self.num_heads
        qkv = F.linear(x.reshape(b * length, width), self.in_proj_weight, self.in_proj_bias)
        q, k, v = split_qkv(qkv.view(b, length, 3 * width), heads)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)  # as torch's _canonical_mask, for autocast
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(b * length, width)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        return out.view(b, length, width)


def split_qkv(qkv: Tensor, heads: int) -> Tuple[Tensor, Tensor, Tensor]:
    """A joint projection's (B, L, 3C) output as three (B, heads, L, C/heads) views, split
    on the (B, L, 3, heads, C/heads) axis: the backward stacks dq, dk, dv straight into the
    projection's layout, where splitting a (3, B, heads, L, C/heads) permutation has them
    stacked and then copied back (a full-size copy per attention layer)."""
    b, length, width3 = qkv.shape
    parts = qkv.view(b, length, 3, heads, width3 // (3 * heads)).unbind(2)
    return tuple(t.transpose(1, 2) for t in parts)


def token_major_attention(model: nn.Module, enabled: bool = True) -> int:
    """Switch every plain batch-first ``nn.MultiheadAttention`` of ``model`` to
    :class:`TokenMajorMultiheadAttention`, in place; ``enabled`` False switches them back
    (``MODEL.CLIP.TOKEN_MAJOR_ATTENTION``: torch's own, e.g. to measure the difference).

    Returns:
        int: how many modules were switched.
    """
    old, new = nn.MultiheadAttention, TokenMajorMultiheadAttention
    if not enabled:
        old, new = new, old
    switched = 0
    for module in model.modules():
        if type(module) is old and module.batch_first:
            module.__class__ = new
            switched += 1
    return switched
