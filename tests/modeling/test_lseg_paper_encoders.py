"""The LSeg paper's image encoders: torchvision ResNet (trained/synchronised BN, ImageNet RGB,
weights from a file), DPT without reassemble convs, timm ViT weights by legacy tag from the
cache (no network) and the official bilinear positional-embedding resize."""

import urllib.error

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from ovseg_testing import tiny_lseg_cfg

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec

from ovseg.modeling.backbone import build_timm_vit_backbone, build_torchvision_resnet_backbone
from ovseg.modeling.backbone.timm_vit import LEGACY_WEIGHTS, resolve_timm_weights
from ovseg.modeling.backbone.torchvision_resnet import build_resnet
from ovseg.modeling.heads.dpt import DPTDecoder
from ovseg.utils.cli import USER_ERRORS
from ovseg.utils.downloads import WeightsDownloadError


def _tv_cfg(tmp_path, **kw):
    cfg = tiny_lseg_cfg(tmp_path)
    cfg.MODEL.TORCHVISION_RESNET.ARCH = "resnet18"
    for k, v in kw.items():
        setattr(cfg.MODEL.TORCHVISION_RESNET, k.upper(), v)
    return cfg


def test_torchvision_resnet_maps_norms_and_statistics(tmp_path):
    backbone = build_torchvision_resnet_backbone(_tv_cfg(tmp_path))
    out = backbone(torch.randn(2, 3, 64, 96))
    shapes = backbone.output_shape()
    for name, (c, s) in zip(
        ["res2", "res3", "res4", "res5"], [(64, 4), (128, 8), (256, 16), (512, 32)]
    ):
        assert shapes[name] == ShapeSpec(channels=c, stride=s)
        assert out[name].shape == (2, c, 64 // s, 96 // s)
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert norms and all(m.weight.requires_grad for m in norms)
    assert backbone.pixel_mean == [123.675, 116.28, 103.53]
    frozen = build_torchvision_resnet_backbone(_tv_cfg(tmp_path, norm="FrozenBN"))
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())


def test_torchvision_weights_from_a_file_and_bad_ones(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    backbone = build_torchvision_resnet_backbone(
        _tv_cfg(tmp_path, weights=str(tmp_path / "r18.pth"), norm="BN")
    )
    assert torch.equal(backbone.resnet.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    with pytest.raises(FileNotFoundError, match="IMAGENET1K_V1"):
        build_torchvision_resnet_backbone(_tv_cfg(tmp_path, weights="nowhere.pth"))
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        build_torchvision_resnet_backbone(_tv_cfg(tmp_path, arch="vit_b_16"))


def test_dpt_without_reassemble_reads_maps_directly():
    shapes = {f"res{i + 2}": ShapeSpec(channels=8 * 2**i, stride=4 * 2**i) for i in range(4)}
    kw = dict(in_features=list(shapes), out_channels=5, features=16)
    dpt = DPTDecoder(shapes, reassemble_channels=[], **kw)
    assert all(isinstance(r, torch.nn.Identity) for r in dpt.reassemble)
    assert [p.weight.shape[1] for p in dpt.project] == [8, 16, 32, 64]
    maps = {
        n: torch.randn(1, s.channels, 64 // s.stride, 64 // s.stride) for n, s in shapes.items()
    }
    assert dpt(maps).shape == (1, 5, 32, 32)
    vit = {n: ShapeSpec(channels=8, stride=16) for n in shapes}
    with pytest.raises(ValueError, match="REASSEMBLE_CHANNELS=\\[\\]"):
        DPTDecoder(vit, reassemble_channels=[], **kw)


def test_legacy_timm_tag_reads_the_cached_file_without_network(tmp_path, monkeypatch):
    url = LEGACY_WEIGHTS[("vit_large_patch16_384", "orig_in21k_ft_in1k")]
    assert url.endswith("jx_vit_large_p16_384-b3be5167.pth")
    cached = tmp_path / "jx_vit_large_p16_384-b3be5167.pth"
    cached.write_bytes(b"x")

    def no_network(*args, **kwargs):
        raise AssertionError("downloaded although the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    got = resolve_timm_weights("vit_large_patch16_384", "orig_in21k_ft_in1k", str(tmp_path))
    assert got == ("file", str(cached))
    # timm 1.x's own tag for the name is other (augreg) weights
    assert resolve_timm_weights("vit_large_patch16_384", "augreg_in21k_ft_in1k") == (
        "timm",
        "vit_large_patch16_384.augreg_in21k_ft_in1k",
    )
    with pytest.raises(FileNotFoundError, match="orig_in21k_ft_in1k"):
        resolve_timm_weights("vit_large_patch16_384", "in22k")


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_offline_downloads_say_where_the_weights_go(tmp_path, monkeypatch):
    # no network: the error names the weights, their URL, the file read before any download
    # and the key to set, instead of urllib's traceback
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(WeightsDownloadError) as info:
        build_resnet("resnet18", "IMAGENET1K_V1")
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    for part in ("torchvision resnet18 IMAGENET1K_V1", "https://download.pytorch.org/models/",
                 f"copy it to {cached}", "set MODEL.TORCHVISION_RESNET.WEIGHTS to its path",
                 "Name or service not known"):  # fmt: skip
        assert part in str(info.value), (part, str(info.value))
    with pytest.raises(WeightsDownloadError) as info:
        resolve_timm_weights("vit_large_patch16_384", "orig_in21k_ft_in1k", str(tmp_path))
    assert f"copy it to {tmp_path / 'jx_vit_large_p16_384-b3be5167.pth'}" in str(info.value)
    assert "MODEL.VIT_BACKBONE.TIMM_PRETRAINED" in str(info.value)
    # a tool reports it as a user error (one line, exit 2)
    assert isinstance(info.value, USER_ERRORS)


def _vit_cfg(tmp_path, interp, weights=""):
    cfg = tiny_lseg_cfg(tmp_path)
    cfg.MODEL.VIT_BACKBONE.TIMM_MODEL = "vit_tiny_patch16_224"
    cfg.MODEL.VIT_BACKBONE.TIMM_PRETRAINED = weights
    cfg.MODEL.VIT_BACKBONE.POS_EMBED_INTERP = interp
    return cfg


def test_timm_file_weights_and_bilinear_positional_resize(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "vit.pth")
    weights = str(tmp_path / "vit.pth")
    bilinear = build_timm_vit_backbone(_vit_cfg(tmp_path, "bilinear", weights)).vit
    bicubic = build_timm_vit_backbone(_vit_cfg(tmp_path, "bicubic", weights)).vit
    assert torch.equal(bilinear.pos_embed, ref.pos_embed)
    grid = ref.pos_embed[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 3), mode="bilinear").flatten(2).transpose(1, 2)
    x = torch.randn(1, 6, 3, 192)  # (B, H, W, C) patch embeddings
    want = torch.cat([ref.cls_token, x.reshape(1, -1, 192)], 1) + torch.cat(
        [ref.pos_embed[:, :1], grid], 1
    )
    with torch.no_grad():
        torch.testing.assert_close(bilinear._pos_embed(x), want)
        assert not torch.allclose(bicubic._pos_embed(x), want, atol=1e-3)
    with pytest.raises(ValueError, match="POS_EMBED_INTERP"):
        build_timm_vit_backbone(_vit_cfg(tmp_path, "nearest"))
