"""The CLIP ModifiedResNet backbone: a trainable copy of the teacher's tower as res2..res5."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import TINY_RN, tiny_lseg_cfg

from detectron2.layers import FrozenBatchNorm2d

from ovseg.clip import build_clip_teacher
from ovseg.modeling.backbone import CLIPResNetBackbone, build_backbone


def _cfg(cache, **resnets):
    cfg = tiny_lseg_cfg(cache)
    cfg.MODEL.CLIP.MODEL_NAME = str(TINY_RN)
    cfg.MODEL.BACKBONE.NAME = "build_clip_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    for key, value in resnets.items():
        setattr(cfg.MODEL.RESNETS, key.upper(), value)
    return cfg


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    return build_clip_teacher(_cfg(tmp_path_factory.mktemp("cache")))


def test_copy_matches_the_teacher_tower(teacher):
    backbone = build_backbone(_cfg(""), teacher=teacher).eval()
    visual = teacher.model.visual
    assert backbone.stem[0] is not visual.conv1
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = backbone(x)
        ref = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))
    assert torch.allclose(out["res5"], ref, atol=1e-5)
    # width 16: stages of 64, 128, 256, 512 channels at strides 4..32
    shapes = backbone.output_shape()
    assert [(s.channels, s.stride) for s in shapes.values()] == [
        (64, 4),
        (128, 8),
        (256, 16),
        (512, 32),
    ]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert backbone.pixel_mean == pytest.approx(teacher.pixel_mean.flatten().tolist())


def test_odd_sizes_are_padded_to_32(teacher):
    backbone = build_backbone(_cfg(""), teacher=teacher)
    out = backbone(torch.randn(1, 3, 37, 70))
    assert out["res5"].shape[-2:] == (2, 3) and out["res2"].shape[-2:] == (16, 24)


def test_frozen_bn_freeze_at_and_unused_stages(teacher):
    backbone = build_backbone(_cfg("", norm="FrozenBN"), teacher=teacher)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    assert all(p.requires_grad for p in backbone.parameters())
    # BatchNorm's own statistics would move in training; frozen ones never do
    bn = build_backbone(_cfg("", norm="BN"), teacher=teacher)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())

    cfg = _cfg("")
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    frozen = build_backbone(cfg, teacher=teacher)
    assert not any(p.requires_grad for p in frozen.stem.parameters())
    assert not any(p.requires_grad for p in frozen.stages[0].parameters())
    assert all(p.requires_grad for p in frozen.stages[1].parameters())
    assert not any(p.requires_grad for p in teacher.parameters())

    only = build_backbone(_cfg("", out_features=["res2", "res3"]), teacher=teacher)
    assert len(only.stages) == 2 and list(only(torch.randn(1, 3, 32, 32))) == ["res2", "res3"]


def _statistics(module):
    return [b.clone() for n, b in module.named_buffers() if n.endswith("running_mean")]


def test_frozen_stages_of_a_batchnorm_backbone_keep_their_statistics(teacher):
    # detectron2's default FREEZE_AT 2 with NORM BN: the stem and res2 stay as loaded
    cfg = _cfg("", norm="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    backbone = build_backbone(cfg, teacher=teacher).train()
    parts = (backbone.stem, backbone.stages[0], backbone.stages[1])
    before = [_statistics(p) for p in parts]
    backbone(torch.randn(2, 3, 64, 64) * 3 + 1)
    after = [_statistics(p) for p in parts]
    for frozen in (0, 1):
        assert before[frozen] and all(
            torch.equal(a, b) for a, b in zip(before[frozen], after[frozen])
        )
    assert not all(torch.equal(a, b) for a, b in zip(before[2], after[2]))  # res3 trains


def test_a_frozen_torchvision_resnet_keeps_its_statistics():
    torchvision = pytest.importorskip("torchvision")
    from ovseg.modeling.backbone.torchvision_resnet import TorchvisionResNetBackbone

    for norm in ("SyncBN", "BN"):
        resnet = torchvision.models.resnet18()
        backbone = TorchvisionResNetBackbone(resnet=resnet, norm=norm, freeze=True).train()
        before = _statistics(backbone)
        backbone(torch.randn(2, 3, 64, 64))
        assert before and all(torch.equal(a, b) for a, b in zip(before, _statistics(backbone)))
        assert not any(p.requires_grad for p in backbone.parameters())


def test_bad_inputs():
    with pytest.raises(TypeError, match="ModifiedResNet"):
        CLIPResNetBackbone(visual=torch.nn.Linear(2, 2))


def test_lseg_on_the_clip_resnet(tmp_path):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(_cfg(tmp_path)).train()
    inputs = [
        {
            "image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
            "sem_seg": torch.randint(0, 3, (64, 64)),
            "vocabulary": ["a", "b", "c"],
        }
        for _ in range(2)
    ]
    model(inputs)["loss_sem_seg"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": inputs[0]["image"][:, :50, :45], "vocabulary": ["x", "y"]}])
    assert out["sem_seg"].shape == (2, 50, 45)
