"""Bilinear resizing as two matrix products, for training losses on upsampled logits.

``F.interpolate(x, size, mode="bilinear", align_corners=False)`` computes each output pixel
from two rows and two columns of the input with fixed weights, so the resize is ``Wh @ x @
Ww^T`` with (out, in) interpolation matrices. The forward values are the same (up to float
rounding); the backward differs in speed: upsampling 32x32 decoder logits to a 512x512 crop,
CUDA's ``upsample_bilinear2d_backward`` scatters every output gradient into 4 input cells with
atomic adds (256 writers per cell), which took 17% of ZegCLIP's VOC training step on an H200
(docs/performance.md), while the matrix form's backward is two more matrix products.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import torch
from torch import Tensor

__all__ = ["bilinear_matrix", "resize_bilinear"]


@lru_cache(maxsize=64)
def _weights(n_in: int, n_out: int) -> Tensor:
    # PyTorch's source index for align_corners=False (area_pixel_compute_source_index):
    # (dst + 0.5) * in / out - 0.5, clamped at 0; neighbours i and min(i + 1, in - 1)
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = src - i0
    mat = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    mat.index_put_((rows, i0), 1 - frac, accumulate=True)
    mat.index_put_((rows, i1), frac, accumulate=True)
    return mat


def bilinear_matrix(n_in: int, n_out: int, device=None, dtype=torch.float32) -> Tensor:
    """The (n_out, n_in) matrix of 1-d bilinear resizing with ``align_corners=False``."""
    return _weights(int(n_in), int(n_out)).to(device=device, dtype=dtype)


def resize_bilinear(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as ``Wh @ x @ Ww^T``.

    Args:
        x (Tensor): (..., H, W).
        size ((int, int)): the output (h, w).

    Returns:
        Tensor: (..., h, w), in ``x``'s dtype (the matrices follow it, so under autocast the
        products run in the autocast dtype, as the rest of the head).
    """
    h, w = (int(s) for s in size)
    if tuple(x.shape[-2:]) == (h, w):
        return x
    wh = bilinear_matrix(x.shape[-2], h, x.device, x.dtype)
    ww = bilinear_matrix(x.shape[-1], w, x.device, x.dtype)
    return torch.matmul(torch.matmul(wh, x), ww.transpose(0, 1))
