"""The MaskCLIP+ paper configs build the official students' backbone, mmseg's ResNetV1c
(chongzhou96/MaskCLIP @245d31f ``configs/_base_/models/maskclip_plus_r50.py:5-16``: deep stem
32, 32, 64 wide, stride in the 3x3 convolution, contracted dilation), initialised from the
converted open-mmlab ImageNet checkpoint (a file the user makes, named in MODEL.WEIGHTS); the
ovseg variants keep detectron2's DeepLab R-103 set-up as it was."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import ROOT

from detectron2.checkpoint import DetectionCheckpointer

from ovseg.convert.resnet_v1c import build_backbone_only
from ovseg.engine.defaults import load_config

CONFIGS = sorted((ROOT / "configs").glob("*/maskclip_plus/*.yaml"))
PAPER = [p for p in CONFIGS if not p.stem.endswith("_ovseg-variant")]
VARIANTS = [p for p in CONFIGS if p.stem.endswith("_ovseg-variant")]


def _id(path) -> str:
    return f"{path.parent.parent.name}/{path.stem}"


def test_configs_found():
    assert len(PAPER) == 6 and len(VARIANTS) == 3


@pytest.mark.parametrize("path", PAPER, ids=_id)
def test_paper_configs_are_mmsegs_resnetv1c_from_its_imagenet_weights(path):
    cfg = load_config(str(path))
    r = cfg.MODEL.RESNETS
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_deeplab_backbone"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0  # mmseg: frozen_stages -1, norm_eval False
    # stem_channels = base_channels = 64: stem 32, 32, 64; res2 bottleneck 64, out 256
    assert (r.STEM_TYPE, r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS) == ("deeplab", 64, 256)
    assert (r.WIDTH_PER_GROUP, r.NUM_GROUPS, r.NORM) == (64, 1, "SyncBN")
    assert not r.STRIDE_IN_1X1 and r.CONTRACT_DILATION
    assert (r.RES4_DILATION, r.RES5_DILATION, list(r.RES5_MULTI_GRID)) == (2, 4, [1, 1, 1])
    # ResNetV1c-101 from resnet101_v1c; the annotation-free students -50 from resnet50_v1c
    depth = 50 if "annofree" in path.stem else 101
    assert r.DEPTH == depth
    assert cfg.MODEL.WEIGHTS == f"output/converted/resnet{depth}_v1c_ovseg.pth"


@pytest.mark.parametrize("path", VARIANTS, ids=_id)
def test_ovseg_variants_keep_detectron2s_deeplab_r103(path):
    cfg = load_config(str(path))
    r = cfg.MODEL.RESNETS
    assert cfg.MODEL.WEIGHTS == "detectron2://DeepLab/R-103.pkl"
    assert (r.DEPTH, r.STEM_TYPE, r.STEM_OUT_CHANNELS) == (101, "deeplab", 128)
    # R-103.pkl puts the stride in the 3x3 conv, as detectron2's DeepLab configs load it
    assert not r.STRIDE_IN_1X1 and not r.CONTRACT_DILATION


def test_the_built_backbone_has_resnetv1cs_widths_strides_and_dilations():
    path = (
        ROOT / "configs/voc/maskclip_plus/maskclip_plus_vitb16_r50_deeplabv2_annofree_2k_bs16.yaml"
    )
    backbone = build_backbone_only(load_config(str(path), ["MODEL.RESNETS.NORM", "BN"])).backbone
    stem = backbone.stem
    assert [tuple(c.weight.shape[:2]) for c in (stem.conv1, stem.conv2, stem.conv3)] == [
        (32, 3), (32, 32), (64, 32),
    ]  # fmt: skip
    res2, res3, res4, res5 = backbone.stages
    assert tuple(res2[0].conv1.weight.shape[:2]) == (64, 64) and res2[-1].out_channels == 256
    assert (res3[0].conv1.stride, res3[0].conv2.stride) == ((1, 1), (2, 2))
    assert [b.conv2.dilation[0] for b in res4] == [1] + [2] * 5  # ResNet-50: 6 blocks
    assert [b.conv2.dilation[0] for b in res5] == [2, 4, 4]
    assert backbone.output_shape()["res5"].stride == 8


def test_a_missing_converted_weights_file_is_named_at_load_time(tmp_path, monkeypatch):
    # what train_net.py (DetectionCheckpointer.resume_or_load) does with MODEL.WEIGHTS
    cfg = load_config(str(PAPER[0]))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match=f"Checkpoint {cfg.MODEL.WEIGHTS} not found"):
        DetectionCheckpointer(torch.nn.Linear(1, 1)).resume_or_load(cfg.MODEL.WEIGHTS)
