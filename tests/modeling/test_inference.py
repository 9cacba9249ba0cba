"""Whole-image and sliding-window inference, and the post-processing to the original size."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import OpNames

from ovseg.modeling.inference import postprocess_to_original, semantic_inference, slide_windows

WINDOW = (32, 32)


@pytest.fixture
def pointwise():
    """A 1x1-conv 'model': each output pixel depends only on its own input pixel, so it is
    exactly translation-equivariant and every window agrees with the whole image."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 5, kernel_size=1).requires_grad_(False)


@pytest.mark.parametrize(
    "size, stride",
    [
        ((20, 24), (16, 16)),  # smaller than the window: padded up to it
        ((32, 32), (21, 21)),  # exactly the window: one window
        ((45, 70), (13, 21)),  # larger, strides that do not divide (size - window)
        ((33, 100), (32, 7)),  # one pixel past the window; stride == window in height
        ((20, 90), (19, 30)),  # smaller in height, larger in width
    ],
)
def test_slide_equals_whole_for_equivariant_model(pointwise, size, stride):
    torch.manual_seed(1)
    # values of order 1, so float32 round-off of the window averaging stays far below 1e-5
    images = torch.rand(2, 3, *size)
    whole = semantic_inference(pointwise, images, mode="whole")
    slide = semantic_inference(pointwise, images, mode="slide", window=WINDOW, stride=stride)
    assert slide.shape == (2, 5, *size)
    torch.testing.assert_close(slide, whole, rtol=0, atol=1e-5)


def test_slide_with_rectangular_window(pointwise):
    images = torch.rand(1, 3, 50, 41)
    whole = semantic_inference(pointwise, images, mode="whole")
    slide = semantic_inference(pointwise, images, mode="slide", window=(24, 16), stride=(10, 11))
    torch.testing.assert_close(slide, whole, rtol=0, atol=1e-5)


def test_slide_is_exact_in_float64():
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(3, 4, kernel_size=1).double()
    images = torch.rand(1, 3, 45, 70, dtype=torch.float64) * 255
    with torch.no_grad():
        whole = semantic_inference(conv, images, mode="whole")
        slide = semantic_inference(conv, images, mode="slide", window=32, stride=(13, 21))
    assert slide.dtype == torch.float64
    torch.testing.assert_close(slide, whole, rtol=0, atol=1e-9)


def test_slide_averages_overlaps_by_count():
    # a model that outputs 1 everywhere: any sum without the division by count would exceed 1
    ones = lambda x: torch.ones(x.shape[0], 2, *x.shape[-2:])
    out = semantic_inference(ones, torch.zeros(1, 3, 45, 70), mode="slide", window=32, stride=8)
    torch.testing.assert_close(out, torch.ones(1, 2, 45, 70))


def test_each_window_is_added_in_place_and_the_count_made_on_the_host():
    # the meta device stands for the GPU: it holds no values, so a check that read the count
    # map there (a wait for the device) would raise
    images = torch.empty(2, 3, 45, 70, device="meta")
    with OpNames(device="meta") as ops:
        out = semantic_inference(
            lambda x: x[:, :2] * 2.0, images, mode="slide", window=32, stride=(13, 21)
        )
    assert out.shape == (2, 2, 45, 70) and out.device.type == "meta"
    # 6 windows, each one addition into the canvas on the device; no copy of a window's
    # canvas onto itself (``canvas[window] += scores``), no count map updated there
    windows = len(slide_windows(45, 70, (32, 32), (13, 21)))
    assert ops.names.count("add_") == windows
    assert "copy_" not in ops.names


@pytest.mark.parametrize("per_forward", [2, 4, 6, 10])
def test_windows_stacked_into_fewer_forwards_give_the_same_scores(per_forward):
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1).double()  # sees the padding
    images = torch.rand(2, 3, 45, 70, dtype=torch.float64) * 255
    shapes = []

    def model(x):
        shapes.append(tuple(x.shape))
        return conv(x)

    with torch.no_grad():
        one = semantic_inference(model, images, mode="slide", window=32, stride=(13, 21))
        calls = len(shapes)
        shapes.clear()
        out = semantic_inference(
            model, images, mode="slide", window=32, stride=(13, 21), windows_per_forward=per_forward
        )
    torch.testing.assert_close(out, one, rtol=0, atol=1e-9)
    # six windows of two images: ceil(6 / per_forward) forwards of up to 2 x per_forward crops
    assert calls == 6 and len(shapes) == -(-6 // per_forward)
    assert shapes[0] == (2 * min(per_forward, 6), 3, 32, 32)
    with pytest.raises(ValueError, match="windows_per_forward must be >= 1"):
        semantic_inference(model, images, mode="slide", window=32, stride=16, windows_per_forward=0)


def test_windows_of_a_known_grid():
    # height 45, window 32, stride 13: starts 0, 13 (13 + 32 = 45, flush).
    # width 70, window 32, stride 21: starts 0, 21, then 42 would overrun -> 38 (flush).
    boxes = slide_windows(45, 70, (32, 32), (13, 21))
    assert boxes == [(y, y + 32, x, x + 32) for y in (0, 13) for x in (0, 21, 38)]


@pytest.mark.parametrize(
    "size, window, stride",
    [
        ((20, 24), (32, 32), (16, 16)),
        ((32, 32), (32, 32), (32, 32)),
        ((45, 70), (32, 32), (13, 21)),
        ((512, 683), (512, 512), (426, 426)),  # the ZegCLIP setting on a 4:3 image
        ((100, 7), (9, 5), (4, 1)),
    ],
)
def test_count_map_covers_every_pixel(size, window, stride):
    height, width = size
    ph, pw = max(height, window[0]), max(width, window[1])
    count = np.zeros((ph, pw), dtype=int)
    boxes = slide_windows(height, width, window, stride)
    for y0, y1, x0, x1 in boxes:
        assert (y1 - y0, x1 - x0) == window
        assert 0 <= y0 and y1 <= ph and 0 <= x0 and x1 <= pw
        count[y0:y1, x0:x1] += 1
    assert (count > 0).all()
    # the last windows end flush with the (padded) border
    assert max(b[1] for b in boxes) == ph and max(b[3] for b in boxes) == pw
    # no window beyond what the stride needs: ceil((size - window) / stride) + 1 per axis
    n_h = -(-(ph - window[0]) // stride[0]) + 1
    n_w = -(-(pw - window[1]) // stride[1]) + 1
    assert len(boxes) == n_h * n_w


def test_whole_resizes_low_resolution_scores():
    def half_res(x):
        return F.avg_pool2d(x[:, :2], 2)

    images = torch.rand(1, 3, 16, 20)
    out = semantic_inference(half_res, images, mode="whole")
    expected = F.interpolate(half_res(images), size=(16, 20), mode="bilinear", align_corners=False)
    assert out.shape == (1, 2, 16, 20)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_half_precision_scores_are_resized_and_returned_in_float32(mode):
    # a model run under autocast: its bf16 scores are resized in float32, not rounded again
    def half_res(x):
        return F.avg_pool2d(x[:, :2], 2).bfloat16()

    images = torch.rand(1, 3, 16, 20)
    out = semantic_inference(half_res, images, mode=mode, window=(16, 20), stride=(16, 20))
    expected = F.interpolate(half_res(images).float(), size=(16, 20), mode="bilinear")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_slide_resizes_low_resolution_window_scores():
    # a constant per-window score map at 1/4 resolution is resized back to the window
    def quarter_res(x):
        return torch.full((x.shape[0], 1, x.shape[-2] // 4, x.shape[-1] // 4), 3.0)

    images = torch.zeros(1, 3, 40, 40)
    out = semantic_inference(quarter_res, images, mode="slide", window=16, stride=12)
    torch.testing.assert_close(out, torch.full((1, 1, 40, 40), 3.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "tiles"}, r"one of \('whole', 'slide'\), got 'tiles'"),
        ({"mode": "slide", "window": (32, 32), "stride": (33, 16)}, r"stride \(33, 16\).*skip"),
        ({"mode": "slide", "window": (0, 32), "stride": (8, 8)}, r"window.*\(0, 32\)"),
        ({"mode": "slide", "window": (32, 32, 3), "stride": (8, 8)}, r"window"),
        ({"mode": "slide", "window": (32, 32), "stride": (8.0, 8)}, r"stride"),
        ({"mode": "slide", "window": (32, 32), "stride": -4}, r"stride.*-4"),
    ],
)
def test_bad_arguments_raise(pointwise, kwargs, match):
    with pytest.raises(ValueError, match=match):
        semantic_inference(pointwise, torch.zeros(1, 3, 40, 40), **kwargs)


def test_bad_images_and_predictions_raise(pointwise):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*\(3, 40, 40\)"):
        semantic_inference(pointwise, torch.zeros(3, 40, 40))
    with pytest.raises(ValueError, match=r"predict_fn.*\(5, 40, 40\)"):
        semantic_inference(lambda x: pointwise(x)[0], torch.zeros(1, 3, 40, 40))


def test_postprocess_crops_padding_then_resizes():
    torch.manual_seed(2)
    scores = torch.rand(4, 8, 10)
    out = postprocess_to_original(scores, (6, 7), 12, 14)
    cropped = scores[None, :, :6, :7]
    expected = F.interpolate(cropped, size=(12, 14), mode="bilinear", align_corners=False)[0]
    assert out.shape == (4, 12, 14)
    torch.testing.assert_close(out, expected)
    # same size and no padding: unchanged
    torch.testing.assert_close(postprocess_to_original(scores, (8, 10), 8, 10), scores)


def test_postprocess_bad_arguments():
    with pytest.raises(ValueError, match=r"\(K, h, w\)"):
        postprocess_to_original(torch.zeros(8, 10), (8, 10), 8, 10)
    with pytest.raises(ValueError, match=r"img_size \(9, 10\) exceeds"):
        postprocess_to_original(torch.zeros(2, 8, 10), (9, 10), 8, 10)


# ---------------------------------------------------------------- LSeg's "encoding" grid
def test_encoding_windows_start_at_multiples_of_the_stride_and_the_last_is_cut():
    # additional_utils/models.py:106-118: ceil((p - 480) / 320) + 1 windows per axis
    boxes = slide_windows(1000, 600, 480, 320, layout="encoding")
    rows = sorted({(y0, y1) for y0, y1, _, _ in boxes})
    cols = sorted({(x0, x1) for _, _, x0, x1 in boxes})
    assert rows == [(0, 480), (320, 800), (640, 1000)]
    assert cols == [(0, 480), (320, 600)]
    # flush: the same count, the last window moved back to the border
    flush = sorted({(y0, y1) for y0, y1, _, _ in slide_windows(1000, 600, 480, 320)})
    assert flush == [(0, 480), (320, 800), (520, 1000)]
    # a side under the window: one window over the padded canvas
    assert slide_windows(300, 600, 480, 320, layout="encoding") == [
        (0, 480, 0, 480), (0, 480, 320, 600),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="SLIDE_LAYOUT 'mmseg' is not one of"):
        slide_windows(100, 100, 48, 32, layout="mmseg")


def test_encoding_pads_each_cut_window_and_the_canvas_with_the_value():
    seen = []

    def record(x):
        seen.append(x.clone())
        return x  # scores = the input: each pixel's average over its windows is itself

    images = torch.rand(1, 3, 40, 70) + 1.0
    black = torch.tensor([-1.0, -2.0, -3.0])
    out = semantic_inference(record, images, mode="slide", window=32, stride=20,
                             layout="encoding", pad_value=black)  # fmt: skip
    assert torch.allclose(out, images)
    assert all(tuple(x.shape[-2:]) == (32, 32) for x in seen)  # every window the window size
    # windows at 0, 20 (rows: 40 -> 2), 0, 20, 40 (cols: 70 -> 3); the last ones cut and padded
    assert len(seen) == 6
    last = seen[-1]  # rows 20-40, cols 40-70: 20 x 30 of image, the rest the value
    assert torch.equal(last[0, :, :20, :30], images[0, :, 20:40, 40:70])
    assert torch.all(last[0, :, 20:, :] == black.view(3, 1, 1))
    assert torch.all(last[0, :, :, 30:] == black.view(3, 1, 1))
    # the flush grid with no value stays as before: zero padding only below the window size
    seen.clear()
    semantic_inference(record, images[:, :, :20], mode="slide", window=32, stride=20)
    assert torch.all(seen[0][0, :, 20:] == 0)


def test_lseg_black_is_minus_mean_over_std():
    from ovseg.modeling.inference import slide_pad_value

    mean, std = torch.full((3, 1, 1), 127.5), torch.full((3, 1, 1), 127.5)
    assert slide_pad_value("flush", mean, std) is None
    assert torch.equal(slide_pad_value("encoding", mean, std), torch.full((3,), -1.0))
