"""Whole-image and sliding-window semantic inference shared by every meta-architecture.

The sliding-window grid follows mmsegmentation's ``slide_inference`` (the last window is
flush with the border, overlapping scores are averaged by count), re-written; unlike
mmsegmentation, an image smaller than the window is zero-padded up to it (bottom/right)
so every window the model sees has the training crop size. The "encoding" layout is
PyTorch-Encoding's ``MultiEvalModule`` (official LSeg, ``additional_utils/models.py:96-130``):
windows start at multiples of the stride, the last one cut short at the border, and every
window and canvas is padded with a given value (LSeg: black, ``pad_image`` :141-151).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.modeling.postprocessing import sem_seg_postprocess

from ..utils.choices import check_choice
from .host_copy import tensor_to_device

__all__ = [
    "INFERENCE_MODES",
    "SLIDE_LAYOUTS",
    "check_slide_layout",
    "group_inputs",
    "slide_pad_value",
    "slide_windows",
    "semantic_inference",
    "postprocess_to_original",
]

INFERENCE_MODES = ("whole", "slide")
# TEST.SLIDE_LAYOUT: "flush" (mmsegmentation's grid, padding 0 = the pixel mean) or "encoding"
SLIDE_LAYOUTS = ("flush", "encoding")


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


def _spans(size: int, window: int, stride: int, layout: str) -> list[tuple[int, int]]:
    """(start, end) spans along one axis of length ``size >= window``: "flush" windows of the
    window size, the last one flush with the border; "encoding" windows at multiples of the
    stride, ``ceil((size - window) / stride) + 1`` of them, the last one cut at the border."""
    if layout == "encoding":
        num = -(-(size - window) // stride) + 1
        return [(i * stride, min(i * stride + window, size)) for i in range(num)]
    num = max(size - window + stride - 1, 0) // stride + 1
    starts = [min(i * stride, size - window) for i in range(num)]
    return [(s, s + window) for s in starts]


def slide_windows(
    height: int,
    width: int,
    window: int | Sequence[int],
    stride: int | Sequence[int],
    layout: str = "flush",
) -> list[tuple[int, int, int, int]]:
    """The sliding-window grid over an image padded to at least the window size.

    Args:
        height, width (int): the image size before padding.
        window (int or (int, int)): window (height, width).
        stride (int or (int, int)): stride (height, width), at most the window.
        layout (str): one of :data:`SLIDE_LAYOUTS`.

    Returns:
        list[tuple[int, int, int, int]]: ``(y0, y1, x0, x1)`` boxes inside the padded
        ``(max(height, wh), max(width, ww))`` canvas: each exactly the window size ("flush"),
        or the last ones cut at the border ("encoding").
    """
    (wh, ww), (sh, sw) = _check_window_stride(window, stride)
    check_slide_layout(layout)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {(height, width)}.")
    ph, pw = max(height, wh), max(width, ww)
    rows, cols = _spans(ph, wh, sh, layout), _spans(pw, ww, sw, layout)
    return [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]


def check_slide_layout(layout: str) -> str:
    """``layout`` if it is one of :data:`SLIDE_LAYOUTS`, else a clear error."""
    hint = "'flush' (mmsegmentation's grid) or 'encoding' (LSeg's PyTorch-Encoding grid)"
    return check_choice(layout, SLIDE_LAYOUTS, "TEST.SLIDE_LAYOUT", hint)


def slide_pad_value(layout: str, pixel_mean: Tensor, pixel_std: Tensor) -> Tensor | None:
    """What a layout pads with, in network-input units: "encoding" black (-mean / std, per
    channel), else None (0, the pixel mean)."""
    if layout != "encoding":
        return None
    return (-pixel_mean / pixel_std).flatten()


def group_inputs(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Indices of equal keys, in order of first appearance (e.g. key = (size, vocabulary))."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def _pad_to(images: Tensor, height: int, width: int, value: Tensor | None) -> Tensor:
    """``images`` padded (bottom/right) to (height, width) with 0 or a per-channel value."""
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    if value is None:
        return F.pad(images, (0, width - w, 0, height - h), value=0.0)
    out = value.to(images).view(1, -1, 1, 1).expand(images.shape[0], -1, height, width).clone()
    out[:, :, :h, :w] = images
    return out


def _predict(predict_fn: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    """Run ``predict_fn`` and resize its (b, K, h', w') scores to the images' (h, w), in
    float32 at least."""
    out = predict_fn(images)
    if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[0] != images.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"predict_fn must return a (b, K, h, w) score tensor for a batch of "
            f"{images.shape[0]} images, got {shape}."
        )
    if out.dtype.itemsize < 4:  # scores made under autocast: resized and returned in float32
        out = out.float()
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return out


def _window_scores(predict_fn, padded: Tensor, windows, size, pad_value, per_forward: int):
    """Each window and its (B, K, window) scores, ``per_forward`` windows' crops stacked into
    one forward (a window's scores are a view of that forward's output)."""
    batch = padded.shape[0]
    for start in range(0, len(windows), per_forward):
        group = windows[start : start + per_forward]
        crops = [_pad_to(padded[:, :, y0:y1, x0:x1], *size, pad_value) for y0, y1, x0, x1 in group]
        out = _predict(predict_fn, crops[0] if len(crops) == 1 else torch.cat(crops))
        del crops
        for j, (y0, y1, x0, x1) in enumerate(group):
            yield (y0, y1, x0, x1), out[j * batch : (j + 1) * batch, :, : y1 - y0, : x1 - x0]
        del out  # before the next forward


def semantic_inference(
    predict_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    mode: str = "whole",
    window: int | Sequence[int] = (512, 512),
    stride: int | Sequence[int] = (426, 426),
    layout: str = "flush",
    pad_value: Tensor | None = None,
    windows_per_forward: int = 1,
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
        layout (str): the window grid, one of :data:`SLIDE_LAYOUTS`.
        pad_value (Tensor, optional): (C,) the value the canvas and the cut windows are padded
            with (network-input units); None = 0.
        windows_per_forward (int): windows whose crops share one forward (B x this images;
            TEST.SLIDE_WINDOWS_PER_FORWARD). 1, mmsegmentation's: the least memory; more:
            fewer, larger forwards (a batch-1 forward on a GPU waits on its kernel launches),
            holding that many windows' (B, K, window) scores at once.

    Returns:
        Tensor: (B, K, H, W) scores (float32 at least).
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"inference mode must be one of {INFERENCE_MODES}, got {mode!r}.")
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}.")
    if mode == "whole":
        return _predict(predict_fn, images)

    (wh, ww), (sh, sw) = _check_window_stride(window, stride)
    if int(windows_per_forward) < 1:
        raise ValueError(f"windows_per_forward must be >= 1, got {windows_per_forward}.")
    windows_per_forward = int(windows_per_forward)
    batch, _, height, width = images.shape
    ph, pw = max(height, wh), max(width, ww)
    padded = _pad_to(images, ph, pw, pad_value)
    windows = slide_windows(height, width, (wh, ww), (sh, sw), layout)
    # how many windows cover each pixel follows from the shapes: counted on the host (the
    # check reads no device memory, so the host does not wait), copied to the device once
    count = torch.zeros((1, 1, ph, pw), dtype=torch.int64)
    for y0, y1, x0, x1 in windows:
        count[:, :, y0:y1, x0:x1] += 1
    # the grid ends flush with both borders, so no pixel is left without a window
    assert bool((count > 0).all()), "sliding-window grid left pixels uncovered"
    count = tensor_to_device(count, images.device)
    scores = None
    outputs = _window_scores(predict_fn, padded, windows, (wh, ww), pad_value, windows_per_forward)
    for (y0, y1, x0, x1), out in outputs:
        if scores is None:
            # half-precision scores are summed in float32; float64 stays float64
            dtype = torch.promote_types(out.dtype, torch.float32)
            scores = torch.zeros((batch, out.shape[1], ph, pw), dtype=dtype, device=out.device)
        # in place on the window's view: ``scores[...] += out`` would then copy the view onto
        # itself, a second pass over the (B, K, window) scores
        scores[:, :, y0:y1, x0:x1].add_(out)
        # dropped before the next forward, which would otherwise run while this window's
        # (B, K, window) scores are still held
        del out
    # in place: a second (B, K, H, W) canvas would double the peak at K = 847
    return scores.div_(count)[:, :, :height, :width]


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
