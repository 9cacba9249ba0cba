"""ovseg.convert for ``--method resnet_v1c``: an ImageNet ResNetV1c checkpoint with
open-mmlab's names and shapes (the re-derived mmseg ResNetV1c, random weights, plus the ``fc``
classifier) becomes a backbone-only ovseg checkpoint that loads strictly into the paper
config's DeepLab ResNet, which then computes what mmseg's ResNetV1c-d8 computes (with the
contracted dilation); what ovseg cannot place, or a config it does not fit, is refused by
name."""

from __future__ import annotations

import pytest
import torch
from convert_utils import MASKCLIP_PLUS_CONFIG, TINY_RN, build, randomise, save_official, tiny_opts
from official_maskclip_plus import ResNetV1c

from detectron2.checkpoint import DetectionCheckpointer

from ovseg.convert import ConversionError, convert_checkpoint
from ovseg.convert.command import main
from ovseg.convert.resnet_v1c import build_backbone_only
from ovseg.engine.defaults import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a ResNet-50 whose stem ends 8 wide (4, 4, 8) and whose res2 bottleneck is 8 wide (out 32)
SMALL = [
    "MODEL.RESNETS.DEPTH", "50",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.NORM", "BN",
    "MODEL.RESNETS.OUT_FEATURES", '["res2", "res3", "res4", "res5"]',
]  # fmt: skip
WIDTHS = dict(stem_channels=8, base_channels=8)
IMAGENET = dict(strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1))  # how the checkpoint was trained
D8 = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))  # the official students


def imagenet_state(seed: int = 0, counters: bool = True) -> dict:
    """An ImageNet ResNetV1c-50 checkpoint's tensors under open-mmlab's names."""
    net = ResNetV1c(**WIDTHS, **IMAGENET)
    randomise(net, seed)
    state = net.state_dict()
    if not counters:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    gen = torch.Generator().manual_seed(seed)
    state["fc.weight"] = torch.randn(10, 8 * 8 * 4, generator=gen)
    state["fc.bias"] = torch.randn(10, generator=gen)
    return state


def paper_cfg(opts=()):
    return load_config(str(MASKCLIP_PLUS_CONFIG), ["MODEL.DEVICE", "cpu", *SMALL, *opts])


@torch.no_grad()
def official_d8(state: dict, contract_dilation: bool = True) -> ResNetV1c:
    """mmseg's ResNetV1c-d8 (the student) initialised from ``state`` as mmcv loads it."""
    net = ResNetV1c(**WIDTHS, **D8, contract_dilation=contract_dilation).eval()
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert missing == [] and unexpected == ["fc.weight", "fc.bias"]
    return net


@torch.no_grad()
def relative_differences(cfg, converted: dict, official: ResNetV1c) -> list:
    """res2..res5 of the config's backbone with ``converted`` against mmseg's four outputs."""
    holder = build_backbone_only(cfg)
    holder.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 64, 96)
    mine = holder.backbone(x)
    theirs = official(x)
    return [
        float((mine[f"res{i + 2}"] - t).abs().max() / t.abs().max()) for i, t in enumerate(theirs)
    ]


def test_every_tensor_is_renamed_or_the_classifier():
    state = imagenet_state()
    out, report = convert_checkpoint("resnet_v1c", state)
    assert set(report.used) | set(report.dropped) == set(state)
    assert set(report.dropped) == {"fc.weight", "fc.bias"}
    assert "ImageNet classifier" in report.dropped["fc.weight"]
    used = report.used
    assert used["stem.0.weight"] == "backbone.stem.conv1.weight"
    assert used["stem.4.running_var"] == "backbone.stem.conv2.norm.running_var"
    assert used["stem.7.bias"] == "backbone.stem.conv3.norm.bias"
    assert used["layer1.0.downsample.0.weight"] == "backbone.res2.0.shortcut.weight"
    assert used["layer3.5.bn2.weight"] == "backbone.res4.5.conv2.norm.weight"
    assert used["layer4.2.conv3.weight"] == "backbone.res5.2.conv3.weight"
    assert all(k.startswith("backbone.") for k in out)
    for old, new in used.items():
        assert torch.equal(out[new], state[old]), old
    assert report.info == ["ResNetV1c-50: deep stem 4, 4, 8 wide, res2 bottleneck 8 wide"]
    # mmcls's layout (backbone. and head.fc.) converts to the same tensors
    mmcls = {("head." if k.startswith("fc.") else "backbone.") + k: v for k, v in state.items()}
    assert convert_checkpoint("resnet_v1c", mmcls)[0].keys() == out.keys()


@pytest.mark.parametrize("counters", [True, False])
def test_loads_strictly_into_the_paper_backbone_and_computes_mmsegs_resnetv1c_d8(counters):
    state = imagenet_state(seed=1, counters=counters)
    cfg = paper_cfg()
    out, report = convert_checkpoint("resnet_v1c", state, cfg)
    assert report.checked_model and report.notes == []
    assert set(report.added) == (set() if counters else {k for k in out if "num_batches" in k})
    if not counters:  # one line for the 55 norms' counters
        assert "added   55: batch-norm update counter" in report.summary()
    assert all(d < 1e-5 for d in relative_differences(cfg, out, official_d8(state)))


def test_the_contracted_dilation_is_what_makes_res4_and_res5_official():
    state = imagenet_state(seed=2)
    cfg = paper_cfg(["MODEL.RESNETS.CONTRACT_DILATION", "False"])
    out, report = convert_checkpoint("resnet_v1c", state, cfg)
    assert any(n.startswith("MODEL.RESNETS.CONTRACT_DILATION False") for n in report.notes)
    # without it ovseg is mmseg's network without contract_dilation ...
    assert all(d < 1e-5 for d in relative_differences(cfg, out, official_d8(state, False)))
    # ... and differs from the official one from res4 on, where the dilation starts
    res2, res3, res4, res5 = relative_differences(cfg, out, official_d8(state, True))
    assert res2 < 1e-5 and res3 < 1e-5 and res4 > 1e-3 and res5 > 1e-3


def test_stride_in_the_1x1_convolution_computes_otherwise_and_is_noted():
    state = imagenet_state(seed=3)
    cfg = paper_cfg(["MODEL.RESNETS.STRIDE_IN_1X1", "True"])
    out, report = convert_checkpoint("resnet_v1c", state, cfg)
    assert any(n.startswith("MODEL.RESNETS.STRIDE_IN_1X1 True") for n in report.notes)
    res2, res3, _, _ = relative_differences(cfg, out, official_d8(state))
    assert res2 < 1e-5 and res3 > 1e-3  # res3's first block strides


def test_what_ovseg_cannot_place_is_refused_by_name():
    state = imagenet_state()
    cases = {
        "conv1.weight": "7x7 stem",
        "layer2.0.downsample.2.weight": "ResNetV1d",
        "layer1.0.se.fc1.weight": "unexpected",
    }
    for key, words in cases.items():
        with pytest.raises(ConversionError, match=rf"{key}.*{words}"):
            convert_checkpoint("resnet_v1c", {**state, key: torch.zeros(1)})
    no_stem = {k: v for k, v in state.items() if not k.startswith("stem.6")}
    with pytest.raises(ConversionError, match=r"stem\.6\.weight"):
        convert_checkpoint("resnet_v1c", no_stem)


def test_configs_the_weights_do_not_fit_are_refused_with_the_key_to_set():
    state = imagenet_state()
    cases = {
        "MODEL.RESNETS.STEM_OUT_CHANNELS": ("16", "set MODEL.RESNETS.STEM_OUT_CHANNELS 8"),
        "MODEL.RESNETS.DEPTH": ("101", "set MODEL.RESNETS.DEPTH 50"),
        "MODEL.RESNETS.STEM_TYPE": ("basic", "set MODEL.RESNETS.STEM_TYPE deeplab"),
        "MODEL.BACKBONE.NAME": ("build_resnet_backbone", "set MODEL.BACKBONE.NAME build_resnet_"),
    }
    for key, (value, words) in cases.items():
        with pytest.raises(ConversionError, match=words):
            convert_checkpoint("resnet_v1c", state, paper_cfg([key, value]))
    cfg = paper_cfg(["MODEL.RESNETS.WIDTH_PER_GROUP", "16"])
    with pytest.raises(ConversionError, match=r"shape differs: backbone\.res2\.0\.conv1\.weight"):
        convert_checkpoint("resnet_v1c", state, cfg)


def test_the_command_writes_what_train_net_loads_into_the_whole_model(tmp_path, capsys):
    state = imagenet_state(seed=4)
    official = save_official(tmp_path / "resnet50_v1c.pth", state)
    out = tmp_path / "resnet50_v1c_ovseg.pth"
    opts = ["MODEL.DEVICE", "cpu", *SMALL]
    args = ["--method", "resnet_v1c", "--input", str(official), "--output", str(out)]
    assert main([*args, "--config-file", str(MASKCLIP_PLUS_CONFIG), *opts]) == 0
    printed = capsys.readouterr().out
    # ResNet-50: stem 3 x (conv + 5 norm tensors), 16 blocks x 3 x 6, 4 shortcuts x 6; fc
    assert "ResNetV1c (ImageNet): 332 official tensors: 330 used (330 renamed), 2 dropped" in (
        printed
    )
    assert "checked against the config's model" in printed and "computes otherwise" not in printed
    # as train_net.py loads MODEL.WEIGHTS into a MaskCLIP+ model (the head stays as built)
    cfg, model = build(MASKCLIP_PLUS_CONFIG, tiny_opts(TINY_RN, tmp_path / "cache") + SMALL)
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    DetectionCheckpointer(model).load(str(out))
    converted = torch.load(out, weights_only=True)["model"]
    assert set(converted) == {f"backbone.{k}" for k in model.backbone.state_dict()}
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, converted[f"backbone.{key}"]), key
    assert all(torch.equal(v, head[k]) for k, v in model.head.state_dict().items())
