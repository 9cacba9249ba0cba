"""The DPT decoder: resampling factors, output sizes for ViT-like and ResNet-like inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec

from ovseg.modeling.heads.dpt import DPTDecoder, FeatureFusionBlock, resample_layer

NAMES = ["res2", "res3", "res4", "res5"]


def _decoder(strides, channels=(8, 8, 8, 8), **kwargs):
    shape = {n: ShapeSpec(channels=c, stride=s) for n, c, s in zip(NAMES, channels, strides)}
    kwargs.setdefault("reassemble_channels", (4, 4, 8, 8))
    kwargs.setdefault("features", 8)
    return DPTDecoder(shape, in_features=NAMES, out_channels=5, **kwargs)


def test_resample_layers_follow_dpt():
    up4, up2 = resample_layer(3, 16, 4), resample_layer(3, 16, 8)
    same, down2 = resample_layer(3, 16, 16), resample_layer(3, 16, 32)
    assert (
        isinstance(up4, nn.ConvTranspose2d) and up4.stride == (4, 4) and up4.kernel_size == (4, 4)
    )
    assert isinstance(up2, nn.ConvTranspose2d) and up2.stride == (2, 2)
    assert isinstance(same, nn.Identity)
    assert isinstance(down2, nn.Conv2d) and down2.stride == (2, 2) and down2.kernel_size == (3, 3)
    x = torch.randn(1, 3, 5, 7)
    assert up4(x).shape[-2:] == (20, 28) and down2(x).shape[-2:] == (3, 4)
    for bad in ((16, 6), (16, 48)):
        with pytest.raises(ValueError, match="power of two"):
            resample_layer(3, *bad)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (1, 1)])
def test_vit_like_inputs(grid):
    """Four maps at the patch stride (16) are reassembled to strides 4..32 and fused; the
    output is at stride 2 (8x the patch grid), for odd grids too."""
    dec = _decoder((16, 16, 16, 16)).eval()
    feats = {n: torch.randn(2, 8, *grid) for n in NAMES}
    out = dec(feats)
    assert out.shape == (2, 5, 8 * grid[0], 8 * grid[1])
    assert dec.out_stride == 2


def test_resnet_like_inputs_are_only_projected():
    dec = _decoder((4, 8, 16, 32), channels=(4, 8, 16, 32)).eval()
    assert all(isinstance(r[1], nn.Identity) for r in dec.reassemble)
    # a 100x60 image: res2..res5 as detectron2's ResNet makes them (ceil at every stage)
    sizes = [(25, 15), (13, 8), (7, 4), (4, 2)]
    feats = {n: torch.randn(1, c, *s) for n, c, s in zip(NAMES, (4, 8, 16, 32), sizes)}
    assert dec(feats).shape == (1, 5, 50, 30)


def test_coarsest_block_has_no_skip_and_every_parameter_gets_a_gradient():
    dec = _decoder((16, 16, 16, 16)).train()
    assert dec.fusion[-1].skip_unit is None and dec.fusion[0].skip_unit is not None
    dec({n: torch.randn(2, 8, 4, 4) for n in NAMES}).sum().backward()
    assert all(p.grad is not None for p in dec.parameters())
    with pytest.raises(ValueError, match="without a skip"):
        dec.fusion[-1](torch.randn(1, 8, 2, 2), torch.randn(1, 8, 2, 2))


def test_fusion_block_with_zeroed_units_is_upsample_then_mix():
    block = FeatureFusionBlock(4, norm="").eval()
    with torch.no_grad():
        for unit in (block.skip_unit, block.unit):
            unit.conv2.weight.zero_()
            unit.conv2.bias.zero_()
    x, skip = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    up = nn.functional.interpolate(x + skip, size=(6, 6), mode="bilinear", align_corners=True)
    assert torch.allclose(block(x, skip), block.out_conv(up), atol=1e-6)


def test_bad_configuration_messages():
    with pytest.raises(ValueError, match=r"\['p7'\] are not backbone outputs"):
        DPTDecoder(
            {n: ShapeSpec(channels=8, stride=16) for n in NAMES},
            in_features=["res2", "res3", "res4", "p7"],
            out_channels=5,
        )
    with pytest.raises(ValueError, match="as many in_features"):
        _decoder((16, 16, 16, 16), reassemble_channels=(4, 4))
