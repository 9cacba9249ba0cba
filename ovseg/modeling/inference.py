"""Whole-image and sliding-window semantic inference shared by every meta-architecture.

The sliding-window grid follows mmsegmentation's ``slide_inference`` (the last window is
flush with the border, overlapping scores are averaged by count), re-written; unlike
mmsegmentation, an image smaller than the window is zero-padded up to it (bottom/right)
so every window the model sees has the training crop size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.modeling.postprocessing import sem_seg_postprocess

__all__ = ["INFERENCE_MODES", "slide_windows", "semantic_inference", "postprocess_to_original"]

INFERENCE_MODES = ("whole", "slide")


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """Validate a (height, width) pair of positive ints (a single int means square)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair
    ):
        raise ValueError(f"{what} must be a pair of positive ints (height, width), got {value!r}.")
    return pair[0], pair[1]


def _check_window_stride(
    window: int | Sequence[int], stride: int | Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    window, stride = _pair(window, "window"), _pair(stride, "stride")
    if stride[0] > window[0] or stride[1] > window[1]:
        raise ValueError(
            f"stride {stride} is larger than window {window}: pixels between windows would be "
            f"skipped (never predicted). Use a stride <= the window in both dimensions."
        )
    return window, stride


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis of length ``size >= window``, the last one flush."""
    num = max(size - window + stride - 1, 0) // stride + 1
    return [min(i * stride, size - window) for i in range(num)]


def slide_windows(
    height: int, width: int, window: int | Sequence[int], stride: int | Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """The sliding-window grid over an image padded to at least the window size.

    Args:
        height, width (int): the image size before padding.
        window (int or (int, int)): window (height, width).
        stride (int or (int, int)): stride (height, width), at most the window.

    Returns:
        list[tuple[int, int, int, int]]: ``(y0, y1, x0, x1)`` boxes, each exactly the window
        size, inside the padded ``(max(height, wh), max(width, ww))`` canvas.
    """
    (wh, ww), (sh, sw) = _check_window_stride(window, stride)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {(height, width)}.")
    ph, pw = max(height, wh), max(width, ww)
    return [(y, y + wh, x, x + ww) for y in _starts(ph, wh, sh) for x in _starts(pw, ww, sw)]


def _predict(predict_fn: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    """Run ``predict_fn`` and resize its (b, K, h', w') scores to the images' (h, w)."""
    out = predict_fn(images)
    if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[0] != images.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"predict_fn must return a (b, K, h, w) score tensor for a batch of "
            f"{images.shape[0]} images, got {shape}."
        )
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return out


def semantic_inference(
    predict_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    mode: str = "whole",
    window: int | Sequence[int] = (512, 512),
    stride: int | Sequence[int] = (426, 426),
) -> Tensor:
    """Per-class scores at the input size, from one forward or from sliding windows.

    Args:
        predict_fn (callable): maps (b, 3, h, w) images to (b, K, h', w') scores (logits or
            probabilities; any h', w', resized bilinearly to h, w).
        images (Tensor): (B, 3, H, W) network inputs (already normalised as ``predict_fn``
            expects).
        mode (str): "whole": one forward on the full image; "slide": windows of ``window``
            size every ``stride`` pixels over the image zero-padded (bottom/right) to at
            least the window, scores averaged where windows overlap.
        window ((int, int)): sliding-window (height, width); unused in "whole" mode.
        stride ((int, int)): sliding-window stride (height, width), at most ``window``.

    Returns:
        Tensor: (B, K, H, W) scores (at least float32 when sliding).
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"inference mode must be one of {INFERENCE_MODES}, got {mode!r}.")
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}.")
    if mode == "whole":
        return _predict(predict_fn, images)

    (wh, ww), (sh, sw) = _check_window_stride(window, stride)
    batch, _, height, width = images.shape
    ph, pw = max(height, wh), max(width, ww)
    padded = F.pad(images, (0, pw - width, 0, ph - height), value=0.0)
    scores = None
    count = torch.zeros((1, 1, ph, pw), dtype=torch.int64, device=images.device)
    for y0, y1, x0, x1 in slide_windows(height, width, (wh, ww), (sh, sw)):
        out = _predict(predict_fn, padded[:, :, y0:y1, x0:x1])
        if scores is None:
            # half-precision scores are summed in float32; float64 stays float64
            dtype = torch.promote_types(out.dtype, torch.float32)
            scores = torch.zeros((batch, out.shape[1], ph, pw), dtype=dtype, device=out.device)
        scores[:, :, y0:y1, x0:x1] += out
        count[:, :, y0:y1, x0:x1] += 1
    # the grid ends flush with both borders, so no pixel is left without a window
    assert bool((count > 0).all()), "sliding-window grid left pixels uncovered"
    return (scores / count)[:, :, :height, :width]


def postprocess_to_original(
    scores: Tensor, img_size: Sequence[int], output_height: int, output_width: int
) -> Tensor:
    """Crop the padding off (K, h, w) scores and resize them to the original image size.

    Args:
        scores (Tensor): (K, h, w) scores of a (possibly padded) network input.
        img_size ((int, int)): (h_in, w_in), the input's size before padding.
        output_height, output_width (int): the original image size (inputs' "height",
            "width").

    Returns:
        Tensor: (K, output_height, output_width) scores.
    """
    if not isinstance(scores, Tensor) or scores.dim() != 3:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a (K, h, w) tensor, got {shape}.")
    h_in, w_in = _pair(tuple(int(v) for v in img_size), "img_size")
    if h_in > scores.shape[1] or w_in > scores.shape[2]:
        raise ValueError(
            f"img_size {(h_in, w_in)} exceeds the scores' spatial size "
            f"{tuple(scores.shape[1:])}; img_size is the unpadded input size."
        )
    _pair((int(output_height), int(output_width)), "output size")
    return sem_seg_postprocess(scores, (h_in, w_in), int(output_height), int(output_width))
