"""ovseg.convert for LSeg: official Lightning state dicts (``net.*``, from the re-derived
official network with random weights and the tiny teacher's CLIP) convert with every tensor
used or dropped for its reason, load strictly, and compute the official logits; ViT (timm,
readout "project") and ResNet (torchvision, no reassemble conv) encoders."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from convert_utils import randomise
from official_lseg import OfficialLSeg
from ovseg_testing import tiny_lseg_cfg

from ovseg.convert import ConversionError, convert_checkpoint
from ovseg.convert.command import build_target

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = ("cat", "dog", "sky")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("clip_cache")


def _cfg(cache, backbone: str):
    cfg = tiny_lseg_cfg(cache)
    if backbone == "vit":
        cfg.MODEL.BACKBONE.NAME = "build_timm_vit_backbone"
        cfg.MODEL.VIT_BACKBONE.TIMM_MODEL = "vit_tiny_patch16_224"
        cfg.MODEL.VIT_BACKBONE.POS_EMBED_INTERP = "bilinear"
    else:
        cfg.MODEL.BACKBONE.NAME = "build_torchvision_resnet_backbone"
        cfg.MODEL.TORCHVISION_RESNET.ARCH = "resnet18"
        cfg.MODEL.TORCHVISION_RESNET.NORM = "BN"
        cfg.MODEL.DPT.REASSEMBLE_CHANNELS = []
    return cfg


def _official(model, backbone: str, seed: int = 0) -> OfficialLSeg:
    torch.manual_seed(seed)
    clip, dim = model.teacher.model, model.teacher.embed_dim
    if backbone == "vit":
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
        net = OfficialLSeg(clip, 16, dim, vit=vit, hooks=(2, 5, 8, 11), channels=(8, 8, 16, 16))
    else:
        net = OfficialLSeg(clip, 16, dim, resnet=torchvision.models.resnet18(weights=None))
    randomise(net.pretrained, seed + 1)
    randomise(net.scratch, seed + 2)
    return net.eval()


@pytest.fixture(scope="module", params=["vit", "resnet"])
def pair(request, cache):
    cfg = _cfg(cache, request.param)
    torch.manual_seed(0)
    model = build_target(cfg)
    net = _official(model, request.param)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    return request.param, cfg, model, net, state


def test_every_official_tensor_is_used_or_dropped_for_its_reason(pair):
    kind, _, _, _, state = pair
    out, report = convert_checkpoint("lseg", state)
    assert set(report.used) | set(report.dropped) == set(state)
    assert not set(report.used) & set(report.dropped)
    assert report.used["net.scratch.layer1_rn.weight"] == "decoder.project.0.weight"
    assert report.used["net.scratch.refinenet2.resConfUnit1.bn1.running_var"] == (
        "decoder.fusion.1.skip_unit.norm1.running_var"
    )
    assert "coarsest" in report.dropped["net.scratch.refinenet4.resConfUnit1.conv1.weight"]
    assert all("CLIP" in why for k, why in report.dropped.items() if "clip_pretrained" in k)
    if kind == "vit":
        assert report.used["net.pretrained.act_postprocess4.4.weight"] == (
            "decoder.reassemble.3.1.weight"
        )
        assert report.used["net.pretrained.act_postprocess1.0.project.0.weight"] == (
            "backbone.readouts.0.project.0.weight"
        )
        assert "never used" in report.dropped["net.pretrained.model.head.weight"]
    else:
        assert report.used["net.pretrained.layer1.4.0.conv1.weight"] == (
            "backbone.resnet.layer1.0.conv1.weight"
        )
        assert (
            report.used["net.pretrained.layer1.1.running_mean"]
            == "backbone.resnet.bn1.running_mean"
        )


@torch.no_grad()
def test_converted_model_computes_the_official_logits(pair):
    kind, cfg, model, net, state = pair
    out, report = convert_checkpoint("lseg", state, cfg, model=model)
    assert report.checked_model and all(c.ok(0.0) for c in report.teacher)
    model.load_state_dict(out, strict=True)
    model.eval()
    torch.manual_seed(3)
    x = torch.randn(2, 3, 64, 96)
    text = model.text_embeddings(NAMES)
    want = net(x, text)
    got = model.predict_logits(x, text)
    assert got.shape == want.shape == (2, 3, 64, 96)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_wrong_backbone_settings_are_refused(pair, cache):
    kind, cfg, _, _, state = pair
    other = _cfg(cache, "resnet" if kind == "vit" else "vit")
    with pytest.raises(ConversionError, match="MODEL.BACKBONE.NAME"):
        convert_checkpoint("lseg", state, other)
    if kind == "resnet":
        bad = cfg.clone()
        bad.MODEL.DPT.REASSEMBLE_CHANNELS = [8, 8, 16, 16]
        with pytest.raises(ConversionError, match="REASSEMBLE_CHANNELS"):
            convert_checkpoint("lseg", state, bad)


def test_unknown_keys_and_other_checkpoints_are_refused(pair):
    state = dict(pair[4])
    state["net.scratch.extra.weight"] = torch.zeros(2)
    with pytest.raises(ConversionError, match="net.scratch.extra.weight"):
        convert_checkpoint("lseg", state)
    with pytest.raises(ConversionError, match="LSeg"):
        convert_checkpoint("lseg", {"decode_head.conv_seg.weight": torch.zeros(2, 2, 1, 1)})
