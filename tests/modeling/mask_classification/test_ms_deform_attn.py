"""Multi-scale deformable attention: the grid_sample core against hand-computed bilinear
samples, and the module's shapes and gradients."""

import pytest
import torch

from ovseg.modeling.mask_classification import MSDeformAttn, ms_deform_attn_core


def _bilinear(img, y, x):
    """Direct bilinear read of img (D, H, W) at pixel coordinates (y, x), zeros outside."""
    d, h, w = img.shape
    y0, x0 = int(torch.floor(torch.tensor(y))), int(torch.floor(torch.tensor(x)))
    out = torch.zeros(d)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx]
    return out


def test_single_level_single_point_is_a_bilinear_sample():
    # one level 3x4 of 1 channel with values 0..11; a point 0.25 px right, 0.5 px down of
    # pixel (1, 1): bilinear between pixels (1,1),(1,2),(2,1),(2,2)
    h, w = 3, 4
    value = torch.arange(12.0).view(1, h * w, 1, 1)  # (N, S, M, D)
    x, y = (1 + 0.5 + 0.25) / w, (1 + 0.5 + 0.5) / h
    loc = torch.tensor([x, y]).view(1, 1, 1, 1, 1, 2)
    weight = torch.ones(1, 1, 1, 1, 1)
    out = ms_deform_attn_core(value, [(h, w)], loc, weight)
    # 0.5*0.75*5 + 0.5*0.25*6 + 0.5*0.75*9 + 0.5*0.25*10
    assert out.shape == (1, 1, 1)
    assert out.item() == pytest.approx(0.375 * 5 + 0.125 * 6 + 0.375 * 9 + 0.125 * 10)


def test_core_matches_a_direct_sampling_loop_on_two_levels():
    torch.manual_seed(0)
    shapes = [(4, 5), (2, 3)]
    n, m, d, lq, p = 2, 2, 3, 4, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d)
    loc = torch.rand(n, lq, m, len(shapes), p, 2) * 1.2 - 0.1  # some points outside
    weight = torch.rand(n, lq, m, len(shapes), p)
    out = ms_deform_attn_core(value, shapes, loc, weight)
    levels = value.split([h * w for h, w in shapes], dim=1)
    expected = torch.zeros(n, lq, m, d)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    img = levels[lvl][b, :, head].t().reshape(d, h, w)
                    for k in range(p):
                        x, y = loc[b, q, head, lvl, k].tolist()
                        sample = _bilinear(img, y * h - 0.5, x * w - 0.5)
                        expected[b, q, head] += weight[b, q, head, lvl, k] * sample
    torch.testing.assert_close(out, expected.flatten(2), atol=1e-5, rtol=1e-5)


def test_core_rejects_shapes_that_do_not_cover_the_values():
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn_core(
            torch.zeros(1, 10, 1, 1),
            [(3, 3)],
            torch.zeros(1, 1, 1, 1, 1, 2),
            torch.zeros(1, 1, 1, 1, 1),
        )


def test_module_shapes_and_gradients_reach_offsets_and_values():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    shapes = torch.tensor([[4, 4], [2, 2]])
    start = torch.tensor([0, 16])
    src = torch.randn(2, 20, 16, requires_grad=True)
    ref = torch.rand(2, 20, 2, 2)
    out = attn(src, ref, src, shapes, start)
    assert out.shape == (2, 20, 16)
    out.square().sum().backward()
    assert src.grad.abs().sum() > 0
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0
    assert attn.attention_weights.weight.grad.abs().sum() > 0
