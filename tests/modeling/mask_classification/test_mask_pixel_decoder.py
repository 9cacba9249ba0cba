"""Mask2Former's pixel decoder on tiny feature maps: shapes, config build, gradients."""

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from ovseg.config import add_ovseg_config
from ovseg.modeling.mask_classification import MSDeformAttnPixelDecoder, build_pixel_decoder

SHAPES = {
    "res2": ShapeSpec(channels=8, stride=4),
    "res3": ShapeSpec(channels=16, stride=8),
    "res4": ShapeSpec(channels=24, stride=16),
    "res5": ShapeSpec(channels=40, stride=32),
}


def _features(bs=2, size=64):
    return {
        k: torch.randn(bs, v.channels, size // v.stride, size // v.stride)
        for k, v in SHAPES.items()
    }


def _decoder(**kw):
    args = dict(
        transformer_dropout=0.0,
        transformer_nheads=4,
        transformer_dim_feedforward=64,
        transformer_enc_layers=2,
        conv_dim=32,
        mask_dim=16,
        norm="GN",
        transformer_in_features=["res3", "res4", "res5"],
        common_stride=4,
    )
    args.update(kw)
    return MSDeformAttnPixelDecoder(SHAPES, **args)


def test_output_shapes_and_levels():
    torch.manual_seed(0)
    dec = _decoder()
    mask_features, enc, multi = dec.forward_features(_features())
    assert mask_features.shape == (2, 16, 16, 16)  # stride 4
    assert enc.shape == (2, 32, 2, 2)  # res5 level
    assert [tuple(m.shape[-2:]) for m in multi] == [(2, 2), (4, 4), (8, 8)]
    assert dec.num_fpn_levels == 1  # one lateral step, on res2
    # official module names kept for checkpoints
    names = {n for n, _ in dec.named_parameters()}
    assert "adapter_1.weight" in names and "layer_1.weight" in names
    assert "transformer.layers.5.self_attn.sampling_offsets.weight" not in names


def test_gradients_reach_the_encoder_and_the_inputs():
    torch.manual_seed(0)
    dec = _decoder()
    feats = {k: v.requires_grad_() for k, v in _features(bs=1).items()}
    mask_features, _, multi = dec(feats)
    (mask_features.square().mean() + multi[0].square().mean()).backward()
    assert feats["res5"].grad.abs().sum() > 0 and feats["res2"].grad.abs().sum() > 0
    assert dec.transformer.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0


def test_builds_from_the_config_with_freeseg_defaults():
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 16
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    dec = build_pixel_decoder(cfg, SHAPES)
    assert isinstance(dec, MSDeformAttnPixelDecoder)
    attn = dec.transformer.layers[0].self_attn
    assert (attn.n_heads, attn.n_points, attn.n_levels) == (8, 4, 3)
    assert dec.transformer.layers[0].linear1.out_features == 1024
    assert dec.transformer.layers[0].dropout1.p == 0.1


def test_missing_inputs_are_named():
    with pytest.raises(ValueError, match="res6"):
        _decoder(transformer_in_features=["res5", "res6"])
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "NoSuchDecoder"
    with pytest.raises(KeyError, match="NoSuchDecoder"):
        build_pixel_decoder(cfg, SHAPES)
