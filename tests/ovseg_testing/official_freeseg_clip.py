"""The FreeSeg release's CLIP image towers written out plainly (paths under bytedance/FreeSeg
@7707335's ``third_party/CLIP/clip/``), the references MODEL.FREESEG.PROMPT_NATIVE_SIZE
(ovseg/clip/native_size.py) is tested against: each a direct transcription on an open_clip
tower's modules, for ``mask=None, return_cls=True`` as the prompt stage calls them
(``ClipAdapter.get_image_features``: ``self.clip_model.visual(image)``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def interpolated_pos(positional_embedding, grid_size, gh, gw):
    """``VisionTransformer.forward``'s interpolation (``model.py:343-360``, bicubic), run
    unconditionally as the release's test (``:343``, the table's length against the batch
    size) runs it for every batch size but 197."""
    cls_pos = positional_embedding[0:1, :]
    per_pos_embedding = (
        F.interpolate(
            positional_embedding[1:, :].permute(1, 0).view(1, -1, grid_size, grid_size),
            size=(gh, gw),
            mode="bicubic",
            align_corners=True,
        )
        .reshape(-1, gh * gw)
        .permute(1, 0)
    )
    return torch.cat([cls_pos, per_pos_embedding])


def vit_forward(visual, x):
    """``VisionTransformer.forward`` (``model.py:319-449``) on an open_clip ViT's modules."""
    x = visual.conv1(x)  # shape = [*, width, grid, grid]
    b, _, gh, gw = x.size()
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolated_pos(visual.positional_embedding, visual.grid_size[0], gh, gw)
    x = visual.ln_pre(x)
    x = visual.transformer(x)  # open_clip's blocks take NLD; the release's LND (:425-437)
    x = visual.ln_post(x[:, 0, :])
    return x @ visual.proj


def attnpool_forward(pool, x):
    """``AttentionPool2d.forward`` (``model.py:84-146``) on open_clip's attention pool."""
    b, c, gh, gw = x.shape
    x = x.reshape(x.shape[0], c, gh * gw).permute(2, 0, 1)  # NCHW -> (HW)NC
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (HW+1)NC
    positional_embedding = pool.positional_embedding
    grid_size = round((positional_embedding.shape[0] - 1) ** 0.5)
    if not (pool.positional_embedding.shape[0] == x.shape[0]):
        positional_embedding = interpolated_pos(positional_embedding, grid_size, gh, gw)
    x = x + positional_embedding[:, None, :].to(x.dtype)  # (HW+1)NC
    x, _ = F.multi_head_attention_forward(
        query=x,
        key=x,
        value=x,
        embed_dim_to_check=x.shape[-1],
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=False,
        need_weights=False,
    )
    return x[0]


def resnet_forward(visual, x):
    """``ModifiedResNet.forward`` (``model.py:196-217``): stem, four layers, the pool."""
    x = visual.stem(x)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    return attnpool_forward(visual.attnpool, x)
