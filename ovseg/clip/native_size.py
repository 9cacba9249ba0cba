# Follows the official FreeSeg CLIP (bytedance/FreeSeg @7707335,
# third_party/CLIP/clip/model.py:84-146 and :319-449), re-written for open_clip's towers.
"""CLIP's global image embedding of an image at its own size, as FreeSeg's CLIP runs it.

The release's prompt stage hands the mapper's 244x224 training crop to CLIP's image tower
as it is (``ClipAdapter.get_image_features``, ``mask2former/modeling/clip_adapter/
adapter.py:60-63``: no resize), and its CLIP interpolates the positional embeddings to the
crop's grid (``third_party/CLIP/clip/model.py:343-360``; the ResNet attention pool likewise,
``:99-112``): the class token's embedding kept apart, the grid's resized bicubically with
``align_corners=True``. ViT-B/16's stride-16 patch embedding floors 244 / 16 = 15.25 to 15
rows (``conv1``, ``:327``: no padding), so the last 4 pixel rows are never seen and the
14x14 table becomes 15x14. At the test crop's 224x224 the grid is the trained one: the
release still interpolates (its test, ``:343``, compares the table's length with the batch
size), and bicubic interpolation with aligned corners to the same size is the identity, so
the table is used as it is here.

This differs from :func:`ovseg.clip.dense.resize_pos_embed` (MaskCLIP's, SAN's and
ZegCLIP's rule), which aligns no corners.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dense import tower_kind

__all__ = ["encode_image_native", "release_pos_embed"]


def release_pos_embed(pos_embed: Tensor, grid: int, new_grid: Tuple[int, int]) -> Tensor:
    """The FreeSeg release's positional embedding for a ``new_grid`` of patches.

    ``model.py:343-360`` (ViT) and ``:99-112`` (attention pool): the first (class) row kept,
    the ``grid x grid`` table resized bicubically, corners aligned, to ``new_grid``,
    row-major. Computed in float32, returned in ``pos_embed``'s dtype.

    Args:
        pos_embed (Tensor): (1 + grid * grid, C), the class token's row first.
        grid (int): the side of the square grid the table was trained for.
        new_grid: (h, w) wanted.

    Returns:
        Tensor: (1 + h * w, C).
    """
    h, w = (int(s) for s in new_grid)
    if pos_embed.shape[0] != 1 + grid * grid:
        raise ValueError(
            f"positional embedding has {pos_embed.shape[0]} rows, expected 1 + {grid}x{grid}"
        )
    if (h, w) == (grid, grid):  # aligned bicubic to the same size is the identity
        return pos_embed
    table = pos_embed[1:].float().t().reshape(1, -1, grid, grid)
    table = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=True)
    table = table.reshape(-1, h * w).t().to(pos_embed.dtype)
    return torch.cat([pos_embed[:1], table])


def _vit_native(visual: nn.Module, x: Tensor) -> Tensor:
    """An open_clip ViT's pooled, projected embedding of ``x`` at its own size."""
    if getattr(visual, "attn_pool", None) is not None:
        raise NotImplementedError(
            "native-size embeddings are not defined for ViT towers with an attentional "
            "pooler (CoCa); set MODEL.FREESEG.PROMPT_NATIVE_SIZE False"
        )
    x = visual.conv1(x)  # stride = kernel, no padding: floor(side / patch) cells
    b, _, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, 1, -1)
    x = torch.cat([cls, x], dim=1)
    grid = int(visual.grid_size[0])
    x = x + release_pos_embed(visual.positional_embedding, grid, (gh, gw)).to(x.dtype)
    x = visual.ln_pre(visual.patch_dropout(x))
    pooled, _ = visual._pool(visual.transformer(x))
    return pooled @ visual.proj if visual.proj is not None else pooled


def _resnet_native(visual: nn.Module, x: Tensor) -> Tensor:
    """An open_clip ModifiedResNet's attention-pooled embedding of ``x`` at its own size."""
    x = visual.stem(x)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    b, c, gh, gw = x.shape
    x = x.reshape(b, c, gh * gw).permute(2, 0, 1)  # (HW, B, C)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    grid = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
    x = x + release_pos_embed(pool.positional_embedding, grid, (gh, gw))[:, None].to(x.dtype)
    x, _ = F.multi_head_attention_forward(
        query=x,
        key=x,
        value=x,
        embed_dim_to_check=c,
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=False,
        need_weights=False,
    )
    return x[0]


def encode_image_native(teacher: nn.Module, images: Tensor) -> Tensor:
    """Global embeddings of ``images`` at their own size (see the module docstring).

    Args:
        teacher (CLIPTeacher): the frozen CLIP (ViT or ModifiedResNet image tower).
        images (Tensor): (B, 3, H, W) RGB in [0, 255], each side at least one patch (ViT) or
            32 pixels (ResNet).

    Returns:
        Tensor: (B, D) L2-normalised, float32, as ``CLIPTeacher.encode_image``.
    """
    visual = teacher.model.visual
    kind = tower_kind(visual)
    if kind is None:
        raise NotImplementedError(
            f"native-size embeddings need an open_clip ViT or ModifiedResNet tower, not "
            f"{type(visual).__name__}; set MODEL.FREESEG.PROMPT_NATIVE_SIZE False"
        )
    if min(images.shape[-2:]) < teacher.patch_size:
        raise ValueError(
            f"images of {tuple(images.shape[-2:])} are smaller than one {teacher.patch_size}-"
            "pixel cell of CLIP's tower; use larger crops (MODEL.FREESEG.PROMPT_TRAIN_SIZE, "
            "PROMPT_TEST_SIZE) or set MODEL.FREESEG.PROMPT_NATIVE_SIZE False"
        )
    x = teacher._normalize(images)
    forward = _vit_native if kind == "vit" else _resnet_native
    with torch.inference_mode(), teacher._autocast():
        emb = F.normalize(forward(visual, x).float(), dim=-1)
    return emb.clone()
