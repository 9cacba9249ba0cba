"""resize_bilinear equals F.interpolate(bilinear, align_corners=False), values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from ovseg.modeling.resize import bilinear_matrix, resize_bilinear


@pytest.mark.parametrize(
    "shape,size",
    [((2, 3, 4, 4), (64, 64)), ((1, 5, 7, 9), (30, 41)), ((2, 2, 32, 32), (512, 500)),
     ((1, 1, 20, 16), (6, 5)), ((3, 8, 8), (8, 24))],
)  # fmt: skip
def test_matches_interpolate_values_and_gradients(shape, size):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    ref = F.interpolate(x if x.dim() == 4 else x[None], size=size, mode="bilinear",
                        align_corners=False)  # fmt: skip
    ref = ref if x.dim() == 4 else ref[0]
    out = resize_bilinear(x, size)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    (gx_ref,) = torch.autograd.grad(ref, x, g)
    (gx,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-10)


def test_matrix_rows_are_two_tap_weights_summing_to_one():
    m = bilinear_matrix(4, 8, dtype=torch.float64)
    torch.testing.assert_close(m.sum(1), torch.ones(8, dtype=torch.float64))
    # output pixel 0 sits at source -0.25, clamped to 0: all weight on input 0
    assert m[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    # output pixel 3 sits at source 1.25: 0.75 of input 1, 0.25 of input 2
    assert m[3].tolist() == [0.0, 0.75, 0.25, 0.0]


def test_same_size_is_identity():
    x = torch.randn(1, 2, 5, 5)
    assert resize_bilinear(x, (5, 5)) is x


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_interpolate_in_float32_and_bfloat16():
    torch.manual_seed(0)
    x = torch.randn(4, 15, 32, 32, device="cuda", requires_grad=True)
    g = torch.randn(4, 15, 512, 512, device="cuda")
    ref = F.interpolate(x, size=(512, 512), mode="bilinear", align_corners=False)
    out = resize_bilinear(x, (512, 512))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (gx_ref,) = torch.autograd.grad(ref, x, g)
    (gx,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = resize_bilinear(x.bfloat16(), (512, 512))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=2e-2, atol=2e-2)
