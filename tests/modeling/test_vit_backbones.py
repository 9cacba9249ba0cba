"""ViT feature backbones: hook defaults, the CLIP tower copy, readouts, timm, the builder."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from ovseg_testing import OpNames, tiny_lseg_cfg

from detectron2.modeling import Backbone

from ovseg.clip import build_clip_teacher
from ovseg.modeling.backbone import (
    CLIPViTBackbone,
    build_backbone,
    build_clip_vit_backbone,
    default_out_indices,
)
from ovseg.modeling.backbone.vit_hooks import Readout


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    return build_clip_teacher(tiny_lseg_cfg(tmp_path_factory.mktemp("cache")))


def test_default_out_indices():
    assert default_out_indices(12) == (2, 5, 8, 11)
    assert default_out_indices(24) == (5, 11, 17, 23)
    assert default_out_indices(3) == (0, 0, 1, 2)
    with pytest.raises(ValueError):
        default_out_indices(0)


def test_clip_backbone_matches_the_teacher_tower(teacher):
    """At the tower's native size, with readout "ignore", the hooked tokens are exactly the
    open_clip tower's intermediate outputs."""
    cfg = tiny_lseg_cfg("")
    cfg.MODEL.VIT_BACKBONE.READOUT = "ignore"
    backbone = build_clip_vit_backbone(cfg, teacher=teacher).eval()
    assert isinstance(backbone, Backbone) and backbone.out_indices == (0, 0, 1, 2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = teacher.model.visual.forward_intermediates(
            x, indices=[0, 1, 2], intermediates_only=True, output_fmt="NCHW"
        )["image_intermediates"]
        got = backbone(x)
    assert list(got) == ["res2", "res3", "res4", "res5"]
    for name, ref in zip(got, (want[0], want[0], want[1], want[2])):
        assert torch.allclose(got[name], ref, atol=1e-5), name
    shapes = backbone.output_shape()
    assert {s.stride for s in shapes.values()} == {16} and shapes["res5"].channels == 64


@pytest.mark.parametrize("size,grid", [((37, 53), (3, 4)), ((128, 80), (8, 5))])
def test_clip_backbone_any_input_size(teacher, size, grid):
    backbone = build_clip_vit_backbone(tiny_lseg_cfg(""), teacher=teacher)
    out = backbone(torch.randn(1, 3, *size))
    assert all(v.shape == (1, 64, *grid) for v in out.values())


def test_clip_backbone_is_a_trainable_copy_and_drops_unused_parts(teacher):
    cfg = tiny_lseg_cfg("")
    cfg.MODEL.VIT_BACKBONE.OUT_INDICES = [0, 1]
    assert list(build_clip_vit_backbone(cfg, teacher=teacher).output_shape()) == ["res2", "res3"]
    cfg.MODEL.VIT_BACKBONE.OUT_INDICES = [0, 0, 1, 1]
    backbone = build_clip_vit_backbone(cfg, teacher=teacher)
    # blocks after the last hook, ln_post and the projection are gone (DDP needs every
    # parameter to get a gradient)
    assert len(backbone.resblocks) == 2 and not hasattr(backbone, "ln_post")
    assert all(p.requires_grad for p in backbone.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert backbone.pixel_mean == pytest.approx(teacher.pixel_mean.flatten().tolist())
    sum(v.sum() for v in backbone(torch.randn(1, 3, 32, 32)).values()).backward()
    assert all(p.grad is not None for p in backbone.parameters())
    cfg.MODEL.VIT_BACKBONE.OUT_INDICES = [0, 1, 5, 2]
    with pytest.raises(ValueError, match=r"OUT_INDICES=\[0, 1, 5, 2\]"):
        build_clip_vit_backbone(cfg, teacher=teacher)


def test_freeze_keeps_the_tower_fixed(teacher):
    cfg = tiny_lseg_cfg("")
    cfg.MODEL.VIT_BACKBONE.FREEZE = True
    backbone = build_clip_vit_backbone(cfg, teacher=teacher)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("readouts.") for n in trainable)


def test_readouts_hand_computed():
    tokens = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    assert torch.equal(Readout("ignore", 4)(tokens), tokens[:, 1:])
    assert torch.equal(Readout("add", 4)(tokens), tokens[:, 1:] + tokens[:, :1])
    project = Readout("project", 4)
    cat = torch.cat([tokens[:, 1:], tokens[:, :1].expand(2, 2, 4)], dim=-1)
    assert torch.allclose(project(tokens), project.project(cat))
    with pytest.raises(ValueError, match="'mean'"):
        Readout("mean", 4)


def test_non_vit_tower_is_refused():
    with pytest.raises(TypeError, match="VisionTransformer"):
        CLIPViTBackbone(visual=torch.nn.Linear(2, 2))


def test_timm_backbone(tmp_path):
    timm = pytest.importorskip("timm")
    cfg = tiny_lseg_cfg(tmp_path)
    cfg.MODEL.BACKBONE.NAME = "build_timm_vit_backbone"
    cfg.MODEL.VIT_BACKBONE.TIMM_MODEL = "vit_tiny_patch16_224"
    backbone = build_backbone(cfg)
    assert backbone.out_indices == (2, 5, 8, 11) and len(backbone.vit.blocks) == 12
    out = backbone(torch.randn(1, 3, 40, 72))
    assert all(v.shape == (1, 192, 3, 5) for v in out.values())
    assert backbone.pixel_mean == pytest.approx([127.5] * 3)
    # local weights: a timm state dict loads; a missing file is named
    path = tmp_path / "vit.pth"
    torch.manual_seed(1)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    torch.save(ref.state_dict(), path)
    cfg.MODEL.VIT_BACKBONE.TIMM_PRETRAINED = str(path)
    loaded = build_backbone(cfg)
    assert torch.equal(loaded.vit.blocks[3].mlp.fc1.weight, ref.blocks[3].mlp.fc1.weight)
    cfg.MODEL.VIT_BACKBONE.TIMM_PRETRAINED = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone(cfg)


def test_timm_attention_splits_qkv_without_copying_their_gradients_back(tmp_path):
    """The timm backbone's attention blocks split q, k, v on their own axis: the outputs and
    every gradient are timm's own forward's (float64), with one copy fewer per block in the
    backward (timm's split stacked dq, dk, dv and copied them back to the qkv layout), and the
    forward copies nothing."""
    pytest.importorskip("timm")
    cfg = tiny_lseg_cfg(tmp_path)
    cfg.MODEL.BACKBONE.NAME = "build_timm_vit_backbone"
    cfg.MODEL.VIT_BACKBONE.TIMM_MODEL = "vit_tiny_patch16_224"
    ours = build_backbone(cfg).double()
    timms = copy.deepcopy(ours)
    for module in timms.modules():  # timm's own forward back
        module.__dict__.pop("forward", None)
    x = torch.randn(2, 3, 40, 72, dtype=torch.float64)
    runs = []
    for backbone in (ours, timms):
        xi = x.clone().requires_grad_(True)
        with OpNames() as ops:
            out = backbone(xi)
            sum((v * v.flatten().cos().view_as(v)).sum() for v in out.values()).backward()
        grads = {n: p.grad for n, p in backbone.named_parameters() if p.grad is not None}
        runs.append((out, xi.grad, grads, Counter(ops.names)))
    (out, dx, grads, ops), (want, want_dx, want_grads, want_ops) = runs
    for k in want:
        torch.testing.assert_close(out[k], want[k], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, want_dx, rtol=1e-12, atol=1e-12)
    assert grads.keys() == want_grads.keys() and len(grads) > 100
    for k in want_grads:
        torch.testing.assert_close(grads[k], want_grads[k], rtol=1e-10, atol=1e-12)
    assert want_ops["clone"] - ops["clone"] == len(ours.vit.blocks) == 12
    # the hooked blocks' tokens are read as they lie (timm's NCHW maps copied each of them)
    with torch.no_grad(), OpNames() as forward:
        ours(x)
    assert "clone" not in forward.names


def test_timm_attention_keeps_its_own_forward_where_the_split_cannot_stand_in(tmp_path):
    """A mask reaches timm's own forward (same output as timm's), and a block of a timm that
    lacks a part the split forward reads (``norm`` came with timm's scale_norm) is left with
    timm's forward instead of failing at the first step."""
    pytest.importorskip("timm")
    from timm.layers import Attention

    from ovseg.modeling.backbone.timm_vit import _split_qkv_on_their_own_axis

    torch.manual_seed(0)
    block = torch.nn.Sequential(Attention(16, num_heads=2)).double()
    _split_qkv_on_their_own_axis(block)
    assert "forward" in block[0].__dict__
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mask = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    want = Attention.forward(block[0], x, attn_mask=mask)
    torch.testing.assert_close(block[0](x, attn_mask=mask), want, rtol=0, atol=0)
    torch.testing.assert_close(block(x), Attention.forward(block[0], x), rtol=1e-12, atol=1e-12)
    older = torch.nn.Sequential(Attention(16, num_heads=2))
    del older[0].norm
    _split_qkv_on_their_own_axis(older)
    assert "forward" not in older[0].__dict__


def test_builder_passes_the_teacher_only_where_accepted(teacher, tmp_path):
    cfg = tiny_lseg_cfg(tmp_path)
    backbone = build_backbone(cfg, teacher=teacher)
    assert torch.equal(backbone.conv1.weight, teacher.model.visual.conv1.weight)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    assert set(build_backbone(cfg, teacher=teacher).output_shape()) == set(
        cfg.MODEL.RESNETS.OUT_FEATURES
    )
    cfg.MODEL.BACKBONE.NAME = "build_nothing"
    with pytest.raises(KeyError, match="'build_nothing' is not a registered backbone"):
        build_backbone(cfg)
