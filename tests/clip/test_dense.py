"""Dense (MaskCLIP) and region embeddings of the teacher, against hand-written references."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import TINY_VIT, random_clip_model, random_image_batch
from torch import nn

from ovseg.clip import CLIPTeacher


def _normalized(teacher, images):
    return (images - teacher.pixel_mean) / teacher.pixel_std


def _maskclip_reference(visual, x):
    """MaskCLIP's rule written out on the model's own modules (nn.MultiheadAttention layout)."""
    b = x.shape[0]
    x = visual.conv1(x)
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    pos = visual.positional_embedding
    if (gh, gw) != tuple(visual.grid_size):
        grid = pos[1:].reshape(1, *visual.grid_size, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)])
    x = torch.cat([visual.class_embedding.expand(b, 1, -1), x], dim=1) + pos
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    last = visual.transformer.resblocks[-1]
    c = x.shape[-1]
    y = last.ln_1(x)
    v = y @ last.attn.in_proj_weight[2 * c :].T + last.attn.in_proj_bias[2 * c :]
    v = last.attn.out_proj(v) + x
    v = v + last.mlp(last.ln_2(v))
    k = y @ last.attn.in_proj_weight[c : 2 * c].T + last.attn.in_proj_bias[c : 2 * c]
    k = last.attn.out_proj(k)
    emb = visual.ln_post(v[:, 1:]) @ visual.proj
    emb = F.normalize(emb, dim=-1).transpose(1, 2).reshape(b, -1, gh, gw)
    return emb, k[:, 1:].transpose(1, 2).reshape(b, c, gh, gw)


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_vit_dense_is_maskclip_rule(vit_teacher, size):
    images = random_image_batch(2, *size)
    emb, keys = vit_teacher.dense_embeddings(images, return_keys=True)
    with torch.no_grad():
        x = _normalized(vit_teacher, images)
        ref, ref_keys = _maskclip_reference(vit_teacher.model.visual, x)
    assert emb.shape == (2, 32, size[0] // 16, size[1] // 16)
    assert torch.allclose(emb, ref, atol=1e-5)
    assert torch.allclose(keys, ref_keys, atol=1e-5)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2, *emb.shape[-2:]), atol=1e-5)


def test_vit_dense_is_attention_restricted_to_self(vit_teacher):
    """Value path == the last block with each token attending only to itself: an independent
    check that uses the model's own forward (and differs from ordinary attention)."""
    visual = vit_teacher.model.visual
    images = random_image_batch(1, 64, 64)
    with torch.no_grad():
        x = visual._embeds(_normalized(vit_teacher, images))
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        n = x.shape[1]
        self_only = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
        tokens_self = visual.ln_post(last(x, attn_mask=self_only)[:, 1:]) @ visual.proj
        tokens_attn = visual.ln_post(last(x)[:, 1:]) @ visual.proj
    ref = F.normalize(tokens_self, dim=-1).transpose(1, 2).reshape(1, 32, 4, 4)
    plain = F.normalize(tokens_attn, dim=-1).transpose(1, 2).reshape(1, 32, 4, 4)
    emb = vit_teacher.dense_embeddings(images)
    assert torch.allclose(emb, ref, atol=1e-5)
    assert not torch.allclose(emb, plain, atol=1e-2)


def test_custom_attention_block_value_path(tmp_path):
    """open_clip's own Attention (head scale, inner norm, post-attention norm, layer scale)."""
    config = json.loads(TINY_VIT.read_text())
    config["vision_cfg"].update(
        scale_heads=True, scale_attn=True, scale_attn_inner=True, ls_init_value=0.5
    )
    path = tmp_path / "tiny_vit_custom_attn.json"
    path.write_text(json.dumps(config))
    model, tokenizer, name = random_clip_model(path)
    visual = model.visual
    last = visual.transformer.resblocks[-1]
    assert type(last).__name__ == "CustomResidualAttentionBlock"
    with torch.no_grad():  # make the optional parts matter
        last.attn.head_scale.copy_(torch.tensor([0.5, 2.0]).view(2, 1, 1))
    teacher = CLIPTeacher(model, tokenizer, name=name)
    images = random_image_batch(1, 64, 64)
    with torch.no_grad():
        x = visual._embeds(_normalized(teacher, images))
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        n = x.shape[1]
        self_only = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
        tokens = visual.ln_post(last(x, attn_mask=self_only)[:, 1:]) @ visual.proj
    ref = F.normalize(tokens, dim=-1).transpose(1, 2).reshape(1, 32, 4, 4)
    assert torch.allclose(teacher.dense_embeddings(images), ref, atol=1e-5)


GRIDS = [((64, 64), (4, 4)), ((320, 480), (20, 30)), ((61, 77), (4, 5)), ((17, 16), (2, 1))]


@pytest.mark.parametrize("size, grid", GRIDS)
def test_vit_grid_follows_input(vit_teacher, size, grid):
    emb = vit_teacher.dense_embeddings(random_image_batch(1, *size))
    assert tuple(emb.shape) == (1, 32, *grid)


def test_odd_sizes_pad_with_pixel_mean(vit_teacher, rn_teacher):
    for teacher, padded in ((vit_teacher, (64, 80)), (rn_teacher, (64, 96))):
        images = random_image_batch(1, 61, 77)
        canvas = teacher.pixel_mean.expand(1, 3, *padded).clone()
        canvas[..., :61, :77] = images
        assert torch.allclose(
            teacher.dense_embeddings(images), teacher.dense_embeddings(canvas), atol=1e-5
        )


def test_resnet_dense_is_attnpool_projections_per_position(rn_teacher):
    visual = rn_teacher.model.visual
    images = random_image_batch(2, 64, 96)
    emb, keys = rn_teacher.dense_embeddings(images, return_keys=True)
    pool = visual.attnpool
    with torch.no_grad():
        feat = visual.stem(_normalized(rn_teacher, images))
        feat = visual.layer4(visual.layer3(visual.layer2(visual.layer1(feat))))
        per_pos = feat.permute(0, 2, 3, 1)  # (B, h, w, C): the Linear layers at every position
        ref = F.normalize(pool.c_proj(pool.v_proj(per_pos)), dim=-1).permute(0, 3, 1, 2)
        ref_keys = pool.k_proj(per_pos).permute(0, 3, 1, 2)
    assert emb.shape == (2, 48, 2, 3)
    assert torch.allclose(emb, ref, atol=1e-5)
    assert torch.allclose(keys, ref_keys, atol=1e-4)
    assert tuple(rn_teacher.dense_embeddings(random_image_batch(1, 65, 97)).shape) == (1, 48, 3, 4)


def test_unsupported_tower_is_named(vit_parts):
    model, tokenizer, name = vit_parts

    class OtherTower(nn.Module):
        image_size = 64
        output_dim = 32

        def forward(self, x):
            return x.mean(dim=(2, 3))

    fake = nn.Module()
    fake.visual = OtherTower()
    fake.text_projection = model.text_projection
    teacher = CLIPTeacher(fake, tokenizer)
    with pytest.raises(NotImplementedError, match="VisionTransformer.*ModifiedResNet.*OtherTower"):
        teacher.dense_embeddings(random_image_batch(1, 64, 64))


def test_a_sequence_first_tower_is_refused_by_every_dense_path(vit_parts):
    """open_clip >= 3.0 builds batch-first image towers; one built sequence-first by hand is
    named by the teacher's dense path and both ViT backbones, not fed (N, L, D) tokens."""
    import copy

    from open_clip.transformer import Transformer

    from ovseg.modeling.backbone import CLIPViTBackbone
    from ovseg.modeling.backbone.clip_vit_prompted import CLIPViTPrompted

    model, tokenizer, name = vit_parts
    lnd = copy.deepcopy(model)
    old = lnd.visual.transformer
    blocks, width = len(old.resblocks), old.width
    heads = old.resblocks[0].attn.num_heads
    lnd.visual.transformer = Transformer(width, blocks, heads, batch_first=False)
    lnd.visual.transformer.load_state_dict(old.state_dict())
    with pytest.raises(ValueError, match="sequence-first .*open_clip.create_model"):
        CLIPTeacher(lnd, tokenizer, name=name).dense_embeddings(random_image_batch(1, 64, 64))
    with pytest.raises(ValueError, match="sequence-first"):
        CLIPViTBackbone(visual=lnd.visual)
    with pytest.raises(ValueError, match="sequence-first"):
        CLIPViTPrompted(visual=lnd.visual)
    CLIPViTPrompted(visual=copy.deepcopy(model.visual))  # the tower open_clip builds is served


@pytest.mark.parametrize("tower", ["vit", "rn"])
def test_pool_regions(vit_teacher, rn_teacher, tower):
    teacher = vit_teacher if tower == "vit" else rn_teacher
    s = teacher.patch_size
    images = random_image_batch(2, 2 * s, 3 * s)
    dense = teacher.dense_embeddings(images)
    full = torch.ones(1, 2 * s, 3 * s, dtype=torch.bool)
    cell = torch.zeros(1, 2 * s, 3 * s)
    cell[0, s:, s : 2 * s] = 1.0  # exactly grid cell (1, 1)
    two = torch.zeros(1, 2 * s, 3 * s)
    two[0, :s, :s] = 1.0
    two[0, :s, 2 * s :] = 0.5  # a soft mask weighs its cells
    regions = teacher.region_embeddings(images, [torch.cat([full, cell[0:1].bool()]), two])
    assert [r.shape for r in regions] == [(2, teacher.embed_dim), (1, teacher.embed_dim)]
    assert torch.allclose(regions[0][0], F.normalize(dense[0].mean(dim=(1, 2)), dim=0), atol=1e-5)
    assert torch.allclose(regions[0][1], dense[0, :, 1, 1], atol=1e-5)
    mix = F.normalize(dense[1, :, 0, 0] + 0.5 * dense[1, :, 0, 2], dim=0)
    assert torch.allclose(regions[1][0], mix, atol=1e-5)


def test_pool_partial_cell_weight(vit_teacher):
    images = random_image_batch(1, 32, 32)
    dense = vit_teacher.dense_embeddings(images)
    mask = torch.zeros(1, 32, 32)
    mask[0, :16, :16] = 1.0
    mask[0, :4, 16:32] = 1.0  # a quarter of cell (0, 1)
    (region,) = vit_teacher.region_embeddings(images, [mask])
    ref = F.normalize(dense[0, :, 0, 0] + 0.25 * dense[0, :, 0, 1], dim=0)
    assert torch.allclose(region[0], ref, atol=1e-5)


def test_crop_regions(vit_teacher):
    images = random_image_batch(2, 64, 64)
    full = torch.ones(1, 64, 64, dtype=torch.bool)
    box = torch.zeros(1, 64, 64, dtype=torch.bool)
    box[0, 10:30, 20:50] = True
    box[0, 10, 20] = False  # one background pixel inside the box
    regions = vit_teacher.region_embeddings(images, [full, box], mode="crop")
    assert [r.shape for r in regions] == [(1, 32), (1, 32)]
    assert torch.allclose(regions[0], vit_teacher.encode_image(images[:1]), atol=1e-5)
    crop = images[1:, :, 10:30, 20:50].clone()
    crop[0, :, 0, 0] = vit_teacher.pixel_mean.flatten()
    assert torch.allclose(regions[1], vit_teacher.encode_image(crop), atol=1e-5)


@pytest.mark.parametrize("mode", ["pool", "crop"])
def test_an_image_without_regions_gets_no_embeddings(vit_teacher, mode):
    # XPM's labeller on an image whose proposals were all dropped
    images = random_image_batch(2, 32, 32)
    regions = vit_teacher.region_embeddings(
        images, [torch.ones(2, 32, 32), torch.zeros(0, 32, 32)], mode=mode
    )
    assert [tuple(r.shape) for r in regions] == [(2, 32), (0, 32)]
    alone = vit_teacher.region_embeddings(images[:1], [torch.ones(2, 32, 32)], mode=mode)[0]
    assert torch.allclose(regions[0], alone, atol=1e-5)


def test_region_input_errors(vit_teacher):
    images = random_image_batch(2, 32, 32)
    empty = torch.zeros(3, 32, 32)
    empty[0, 0, 0] = 1.0
    empty[2, 5, 5] = 1.0
    ok = torch.ones(1, 32, 32)
    for mode in ("pool", "crop"):
        with pytest.raises(ValueError, match=r"masks\[1\] has empty masks at indices \[1\]"):
            vit_teacher.region_embeddings(images, [ok, empty], mode=mode)
    with pytest.raises(ValueError, match=r"masks\[0\] has shape \(1, 16, 32\)"):
        vit_teacher.region_embeddings(images, [ok[:, :16], ok])
    with pytest.raises(ValueError, match="2 images"):
        vit_teacher.region_embeddings(images, [ok])
    with pytest.raises(ValueError, match="'box'"):
        vit_teacher.region_embeddings(images, [ok, ok], mode="box")
