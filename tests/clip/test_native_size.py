"""Native-size CLIP embeddings (ovseg/clip/native_size.py) against the FreeSeg release's
CLIP written out (tests/ovseg_testing/official_freeseg_clip.py): the interpolated
positional embedding, the ViT and ResNet towers on non-square inputs, and the test crop's
square input, where nothing is interpolated."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import official_freeseg_clip as ref
from ovseg_testing import random_image_batch

from ovseg.clip.dense import resize_pos_embed
from ovseg.clip.native_size import encode_image_native, release_pos_embed


def test_pos_embed_is_the_release_formula():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(1 + 14 * 14, 32, generator=g)  # ViT-B/16's 14x14 grid
    ours = release_pos_embed(table, 14, (15, 14))  # the 244x224 crop: floor(244 / 16) = 15
    assert ours.shape == (1 + 15 * 14, 32)
    torch.testing.assert_close(ours, ref.interpolated_pos(table, 14, 15, 14), rtol=0, atol=1e-6)
    assert torch.equal(ours[0], table[0])  # the class token's row is kept apart
    # corners aligned: the four corner cells keep their embeddings exactly
    grid, old = ours[1:].view(15, 14, -1), table[1:].view(14, 14, -1)
    for i, j in ((0, 0), (-1, 0), (0, -1), (-1, -1)):
        torch.testing.assert_close(grid[i, j], old[i, j], rtol=0, atol=1e-5)
    # not the dense teachers' rule (MaskCLIP, ZegCLIP: corners not aligned)
    assert not torch.allclose(resize_pos_embed(table, (14, 14), (15, 14)), ours, atol=1e-3)
    # the 224x224 test crop: the release interpolates 14x14 to 14x14, the identity
    assert torch.equal(ref.interpolated_pos(table, 14, 14, 14), table)
    assert release_pos_embed(table, 14, (14, 14)) is table
    with pytest.raises(ValueError, match="expected 1 \\+ 13x13"):
        release_pos_embed(table, 13, (15, 14))


def _official(teacher, images, forward):
    x = (images - teacher.pixel_mean) / teacher.pixel_std
    with torch.no_grad():
        return F.normalize(forward(teacher.model.visual, x), dim=-1)


def test_vit_at_its_own_size_is_the_release_tower(vit_teacher):
    images = random_image_batch(2, 84, 64)  # 5.25 x 4 patches of 16: a 5x4 grid
    shapes = []
    hook = vit_teacher.model.visual.conv1.register_forward_hook(
        lambda m, i, out: shapes.append(tuple(out.shape[-2:]))
    )
    try:
        ours = encode_image_native(vit_teacher, images)
    finally:
        hook.remove()
    assert shapes == [(5, 4)]
    torch.testing.assert_close(ours, _official(vit_teacher, images, ref.vit_forward))
    # the model's own 64x64: nothing interpolated, the plain tower's embedding
    square = random_image_batch(2, 64, 64, seed=1)
    torch.testing.assert_close(
        encode_image_native(vit_teacher, square), vit_teacher.encode_image(square)
    )


def test_resnet_at_its_own_size_is_the_release_tower(rn_teacher):
    images = random_image_batch(2, 96, 64)  # a 3x2 grid after the /32 tower
    ours = encode_image_native(rn_teacher, images)
    torch.testing.assert_close(ours, _official(rn_teacher, images, ref.resnet_forward))
    square = random_image_batch(2, 64, 64, seed=1)
    torch.testing.assert_close(
        encode_image_native(rn_teacher, square), rn_teacher.encode_image(square)
    )


def test_too_small_an_image_is_refused(vit_teacher):
    with pytest.raises(ValueError, match="PROMPT_NATIVE_SIZE False"):
        encode_image_native(vit_teacher, random_image_batch(1, 12, 64))
