"""The matmul RoIAlign (ovseg/modeling/xpm/roi_align.py) against torchvision's roi_align:
forward and gradient to 1e-5 over adaptive and fixed sampling, aligned and not, boxes
partly outside the map and empty ones; the size rule; the XPM heads using it."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import tiny_xpm_cfg
from torchvision.ops import roi_align

from detectron2.modeling import build_model

from ovseg.modeling.xpm.roi_align import ROIAlignAuto, roi_align_matmul, sampling_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rois(n: int, images: int, side: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * side * 1.2 - side * 0.1  # some start outside
    wh = torch.rand(n, 2, generator=g) * side * 0.8
    index = torch.randint(0, images, (n, 1), generator=g).float()
    rois = torch.cat([index, xy, xy + wh], 1)
    rois[0, 1:] = torch.tensor([9.0, 9.0, 9.0, 9.0])  # an empty box
    rois[1, 1:] = torch.tensor([-30.0, -30.0, -20.0, -20.0])  # wholly outside
    return rois


@pytest.mark.parametrize(
    "height, width, sampling_ratio, aligned",
    [(4, 4, 0, True), (7, 5, 0, True), (4, 6, 2, True), (9, 6, 0, False), (16, 16, 0, True)],
)
def test_matches_torchvision_forward_and_gradient(height, width, sampling_ratio, aligned):
    features = torch.randn(3, 5, height, width, requires_grad=True)
    rois = _rois(40, 3, 16.0 * max(height, width))
    args = (7, 1 / 16, sampling_ratio, aligned)
    want = roi_align(features, rois, *args)
    got = roi_align_matmul(features, rois, *args)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(want)
    (grad_want,) = torch.autograd.grad(want, features, upstream)
    (grad_got,) = torch.autograd.grad(got, features, upstream)
    torch.testing.assert_close(grad_got, grad_want, atol=1e-5, rtol=1e-5)


def test_weights_are_averages_of_bilinear_samples():
    # a box covering feature pixels 0..2 (aligned: centres at 0.5 -> 0); one 1x1 bin of 2x2
    # samples: rows and columns at 0.5 and 1.5 -> each of the 3x3 pixels weighted
    rois = torch.tensor([[0.0, 0.5, 0.5, 2.5, 2.5]])
    weights = sampling_weights(rois, 4, 4, 1, 1.0, 0, True).reshape(4, 4)
    axis = torch.tensor([0.25, 0.5, 0.25, 0.0])
    torch.testing.assert_close(weights, axis[:, None] * axis[None, :])
    assert float(weights.sum()) == pytest.approx(1.0)


def test_size_rule_and_module_agree_with_torchvision():
    align = ROIAlignAuto((14, 14), 1 / 16, 0, aligned=True, max_pixels=64)
    small, large = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 9, 9)
    assert align.uses_matmul(small) and not align.uses_matmul(large)
    rois = _rois(10, 2, 128.0)
    for features in (small, large):
        torch.testing.assert_close(
            align(features, rois), roi_align(features, rois, 14, 1 / 16, 0, True)
        )
    with pytest.raises(ValueError, match="square"):
        ROIAlignAuto((14, 7), 1 / 16, 0)


@pytest.mark.parametrize("autocast", [False, True])
def test_half_precision_features_sample_float32_boxes(autocast):
    # boxes near 1000 px: in bfloat16 they would round to multiples of 4 px
    align = ROIAlignAuto((7, 7), 1 / 32, 0, aligned=True, max_pixels=0)
    features = torch.randn(1, 4, 40, 40).bfloat16()
    rois = torch.tensor([[0.0, 600.3, 500.7, 900.2, 1000.9], [0.0, 17.5, 3.3, 700.1, 650.6]])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = align(features, rois)
    want = roi_align(features.float(), rois, 7, 1 / 32, 0, True).bfloat16()
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_xpm_heads_pool_through_it(tmp_path):
    model = build_model(tiny_xpm_cfg(tmp_path, "XPMTeacher"))
    (pooler,) = model.roi_heads.pooler.level_poolers
    assert isinstance(pooler, ROIAlignAuto) and pooler.aligned and pooler.max_pixels == 256
    off = build_model(
        tiny_xpm_cfg(tmp_path, "XPMTeacher", "MODEL.XPM.ROI_ALIGN_MATMUL_MAX_PIXELS", "0")
    )
    assert not off.roi_heads.pooler.level_poolers[0].uses_matmul(torch.zeros(1, 1, 4, 4))
