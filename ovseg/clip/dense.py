# Follows the official MaskCLIP (chongzhou96/MaskCLIP: mmseg ViT backbone with return_qkv, and
# MaskClipHead), re-written for open_clip's vision towers.
"""Dense (per-location) CLIP embeddings by MaskCLIP's rule, for open_clip vision towers.

ViT: every block but the last runs as usual; the last block keeps only its value path
(``v = out_proj(v_proj(ln_1(x)))``, ``v = v + x``, ``v = v + mlp(ln_2(v))``), then
``ln_post`` and the visual projection map every patch token into the joint space.
ModifiedResNet: the attention pool's ``v_proj`` then ``c_proj`` as 1x1 convolutions on the
last feature map (no positional embedding, as in MaskCLIP).

Inputs are already normalised; sides that are not a multiple of the tower's stride are padded
at the bottom/right with zeros (= the pixel mean), like mmseg's ``AdaptivePadding("corner")``
that MaskCLIP's ViT uses, so the grid is ``ceil(H / stride) x ceil(W / stride)`` and cell
``(i, j)`` covers pixels ``[i*s, (i+1)*s) x [j*s, (j+1)*s)``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

__all__ = [
    "POS_EMBED_MODES",
    "SUPPORTED_TOWERS",
    "check_batch_first",
    "dense_stride",
    "pad_to_multiple",
    "patch_embedding",
    "qkv_projections",
    "resize_pos_embed",
    "resnet_dense",
    "tower_kind",
    "vit_dense",
    "vit_tokens",
]

# how resize_pos_embed interpolates the grid of positional embeddings
POS_EMBED_MODES = ("bicubic", "bilinear")

SUPPORTED_TOWERS = ("open_clip.transformer.VisionTransformer", "open_clip.ModifiedResNet")

# ModifiedResNet: stem /4, then layers 2-4 each /2
_RESNET_STRIDE = 32


def tower_kind(visual: nn.Module) -> Optional[str]:
    """Return ``"vit"``, ``"resnet"``, or None for a vision tower without a dense rule."""
    if isinstance(visual, VisionTransformer):
        return "vit"
    if isinstance(visual, ModifiedResNet):
        return "resnet"
    return None


def dense_stride(visual: nn.Module) -> Optional[int]:
    """Pixels per dense-grid cell: the patch size (ViT), 32 (ModifiedResNet), else None."""
    kind = tower_kind(visual)
    if kind == "vit":
        ph, pw = _pair(visual.patch_size)
        if ph != pw:
            raise NotImplementedError(f"non-square ViT patches {(ph, pw)} are not supported")
        return ph
    if kind == "resnet":
        return _RESNET_STRIDE
    return None


def _pair(v) -> Tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad (B, C, H, W) at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


def resize_pos_embed(
    pos_embed: Tensor,
    old_grid: Tuple[int, int],
    new_grid: Tuple[int, int],
    num_prefix: int = 1,
    mode: str = "bicubic",
) -> Tensor:
    """Resize a ViT positional embedding to another patch grid (bicubic by default).

    Args:
        pos_embed (Tensor): (num_prefix + gh * gw, C), prefix (class) tokens first.
        old_grid: (gh, gw) the embedding was trained for.
        new_grid: (h, w) wanted.
        num_prefix (int): leading tokens that are not on the grid (kept as they are).
        mode (str): "bicubic" (MaskCLIP, SAN) or "bilinear" (the official ZegCLIP), both
            with ``align_corners=False``; one of ``POS_EMBED_MODES``.

    Returns:
        Tensor: (num_prefix + h * w, C).
    """
    if mode not in POS_EMBED_MODES:
        raise ValueError(
            f"positional-embedding interpolation {mode!r} is not one of {list(POS_EMBED_MODES)}"
        )
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos_embed
    gh, gw = old_grid
    if pos_embed.shape[0] != num_prefix + gh * gw:
        raise ValueError(
            f"positional embedding has {pos_embed.shape[0]} tokens, expected "
            f"{num_prefix} + {gh}x{gw} for the tower's grid"
        )
    prefix, grid = pos_embed[:num_prefix], pos_embed[num_prefix:]
    grid = grid.float().reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    # align_corners=False: as MaskCLIP (mmseg resize_pos_embed, bicubic), SAN (bicubic) and
    # ZegCLIP (F.interpolate's bilinear default)
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=0)


def qkv_projections(attn: nn.Module):
    """Split an attention module's input projection into (weight, bias) for q, k and v.

    Works for ``nn.MultiheadAttention`` and open_clip's own ``Attention`` (fused
    ``in_proj_weight`` or separate ``q/k/v_proj_weight``).

    Returns:
        tuple: ((w_q, b_q), (w_k, b_k), (w_v, b_v)); biases may be None.
    """
    weight = getattr(attn, "in_proj_weight", None)
    if weight is not None:
        weights = weight.chunk(3, dim=0)
    else:
        weights = tuple(getattr(attn, f"{n}_proj_weight", None) for n in ("q", "k", "v"))
        if any(w is None for w in weights):
            raise NotImplementedError(
                f"attention module {type(attn).__name__} has neither in_proj_weight nor "
                "q/k/v_proj_weight; cannot take its value path"
            )
    bias = getattr(attn, "in_proj_bias", None)
    biases = bias.chunk(3) if bias is not None else (None, None, None)
    return tuple(zip(weights, biases))


def _merge_heads_and_project(attn: nn.Module, x: Tensor) -> Tensor:
    """What an attention module applies after mixing tokens: head scale, inner norm, out_proj."""
    head_scale = getattr(attn, "head_scale", None)  # open_clip Attention(scale_heads=True)
    if head_scale is not None:
        n, length, c = x.shape
        heads = head_scale.shape[0]
        x = (x.view(n, length, heads, c // heads) * head_scale.view(1, 1, heads, 1)).view(
            n, length, c
        )
    ln_inner = getattr(attn, "ln_inner", None)
    if ln_inner is not None:
        x = ln_inner(x)
    return attn.out_proj(x)


def _last_block_value_path(
    block: nn.Module, x: Tensor, return_keys: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """MaskCLIP's last block: the value path replaces attention. x is (B, L, C)."""
    h = block.ln_1(x)
    (_, _), (w_k, b_k), (w_v, b_v) = qkv_projections(block.attn)
    v = _merge_heads_and_project(block.attn, F.linear(h, w_v, b_v))
    ln_attn = getattr(block, "ln_attn", None)  # CustomResidualAttentionBlock's post-attn norm
    if ln_attn is not None:
        v = ln_attn(v)
    v = x + block.ls_1(v)
    v = v + block.ls_2(block.mlp(block.ln_2(v)))
    keys = None
    if return_keys:
        # The official MaskCLIP projects q, k and v alike through out_proj (mmseg vit.py,
        # return_qkv) and smooths with those keys; we return the same.
        keys = block.attn.out_proj(F.linear(h, w_k, b_k))
    return v, keys


def patch_embedding(conv: nn.Conv2d, x: Tensor, stride: Optional[int] = None) -> Tensor:
    """A ViT's patch embedding ``conv`` at another stride (None: its own, the patch size).

    A smaller stride gives overlapping patches, zero-padded by half the difference so that
    cell (i, j) of the (H/s, W/s) grid is centred on the stride-sized cell (i, j); the caller
    checks that it divides the patch size with an even difference.
    """
    patch = conv.kernel_size[0]
    if stride is None or stride == patch:
        return conv(x)
    pad = (patch - stride) // 2
    return F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=pad)


def check_batch_first(visual: nn.Module) -> None:
    """Refuse a ViT tower whose blocks take sequence-first (L, N, D) tokens.

    open_clip >= 3.0 (ovseg's floor) builds every image tower batch-first; ovseg's dense paths
    feed the blocks (N, L, D) tokens, so a tower made otherwise (a hand-built
    ``Transformer(batch_first=False)``) is named here instead of failing inside a block.
    """
    if not getattr(visual.transformer, "batch_first", True):
        raise ValueError(
            f"the ViT tower {type(visual).__name__} runs its blocks sequence-first "
            "(transformer.batch_first False); ovseg needs the batch-first towers open_clip >= "
            "3.0 builds: create the model with open_clip.create_model"
        )


def vit_tokens(tower: nn.Module, x: Tensor, stride: Optional[int] = None) -> Tuple[Tensor, tuple]:
    """A ViT's input tokens: patch embedding, class token, resized positional embedding, ln_pre.

    Args:
        tower: an open_clip ``VisionTransformer``, or a module holding its ``conv1``,
            ``class_embedding``, ``positional_embedding``, ``ln_pre`` and ``grid_size``.
        x (Tensor): (B, 3, H, W) normalised images.
        stride (int, optional): stride of the patch embedding (see :func:`patch_embedding`).

    Returns:
        tuple: tokens (B, 1 + h * w, C) batch-first, class token first; the grid (h, w).
    """
    x = patch_embedding(tower.conv1, x, stride)
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    cls = tower.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + resize_pos_embed(tower.positional_embedding, tower.grid_size, grid).to(x.dtype)
    return tower.ln_pre(x), grid


def vit_dense(
    visual: VisionTransformer, x: Tensor, return_keys: bool = False
) -> Tuple[Tensor, Optional[Tensor]]:
    """Patch-token embeddings of an open_clip ViT by MaskCLIP's last-block rule.

    Args:
        visual (VisionTransformer): the tower, in eval mode.
        x (Tensor): (B, 3, H, W) normalised images, H and W multiples of the patch size.
        return_keys (bool): also return the last block's keys.

    Returns:
        tuple: embeddings (B, D, H/p, W/p), not normalised; keys (B, C, H/p, W/p) or None.
    """
    if getattr(visual, "attn_pool", None) is not None:
        raise NotImplementedError(
            "dense embeddings are not defined for ViT towers with an attentional pooler (CoCa)"
        )
    b = x.shape[0]
    x, (gh, gw) = vit_tokens(visual, x)

    check_batch_first(visual)
    blocks = list(visual.transformer.resblocks)
    for block in blocks[:-1]:
        x = block(x)
    v, keys = _last_block_value_path(blocks[-1], x, return_keys)

    tokens = visual.ln_post(v[:, 1:])
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    emb = tokens.transpose(1, 2).reshape(b, -1, gh, gw)
    if keys is not None:
        keys = keys[:, 1:].transpose(1, 2).reshape(b, -1, gh, gw)
    return emb, keys


def _conv1x1(x: Tensor, linear: nn.Linear) -> Tensor:
    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


def resnet_dense(
    visual: ModifiedResNet, x: Tensor, return_keys: bool = False
) -> Tuple[Tensor, Optional[Tensor]]:
    """Per-location embeddings of an open_clip ModifiedResNet by MaskCLIP's rule.

    Args:
        visual (ModifiedResNet): the tower, in eval mode.
        x (Tensor): (B, 3, H, W) normalised images, H and W multiples of 32.
        return_keys (bool): also return the attention pool's keys (``k_proj`` as 1x1 conv).

    Returns:
        tuple: embeddings (B, D, H/32, W/32), not normalised; keys (B, C, H/32, W/32) or None.
    """
    x = visual.stem(x)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    emb = _conv1x1(_conv1x1(x, pool.v_proj), pool.c_proj)
    keys = _conv1x1(x, pool.k_proj) if return_keys else None
    return emb, keys
