"""RoIAlign as a matrix product, for small feature maps on the CPU.

torchvision's CPU ``roi_align`` backward loops over every RoI, channel and sampling point
and dominated a toy XPM step (64x64 images: a 4x4 res4 map). On such a map RoIAlign is a
small dense linear map: each output bin is a fixed weighted sum of the map's pixels. This
module builds that (R, P*P, H*W) bilinear sampling-weight matrix, with torchvision's
``aligned=True`` semantics and its sampling ratio (``sampling_ratio <= 0``: ceil(RoI side /
P) points per bin side), and applies it with one batched matmul; autograd gives the
backward. :class:`ROIAlignAuto` uses it where it is faster (CPU, maps of at most
:data:`MATMUL_MAX_PIXELS` pixels) and torchvision elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align as tv_roi_align

__all__ = ["MATMUL_MAX_PIXELS", "ROIAlignAuto", "roi_align_matmul", "sampling_weights"]

# the largest H * W the CPU path samples through the matmul: its cost grows with R * C * H * W
# against torchvision's R * C * P * P * samples; forward + backward of 280 RoIs, 64 channels:
# 9x faster on 4x4 maps, 1.5x on 16x16, 0.4x on 32x32 (docs/reproduction.md, XPM)
MATMUL_MAX_PIXELS = 256


def _axis_points(start: Tensor, size: Tensor, pooled: int, grid: Tensor, max_grid: int):
    """Sampling coordinates along one axis: (R, pooled, max_grid) and their validity.

    Args:
        start, size (Tensor): (R,) the RoI's start and extent in feature pixels.
        grid (Tensor): (R,) sampling points per bin along this axis.
    """
    bin_size = size / pooled
    p = torch.arange(pooled, dtype=start.dtype, device=start.device)
    g = torch.arange(max_grid, dtype=start.dtype, device=start.device)
    offset = (g[None, :] + 0.5) / grid[:, None].clamp(min=1).to(start.dtype)  # (R, G)
    coords = start[:, None, None] + bin_size[:, None, None] * (p[None, :, None] + offset[:, None])
    valid = g[None, None, :] < grid[:, None, None]
    return coords, valid.expand_as(coords)


def _bilinear(coords: Tensor, length: int):
    """torchvision's bilinear rule along one axis: (low, high) indices and their weights,
    zero weight outside [-1, length]."""
    inside = (coords >= -1.0) & (coords <= length)
    c = coords.clamp(min=0)
    low = c.floor().long()
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    c = torch.where(at_end, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    zero = torch.zeros_like(frac)
    return low, high, torch.where(inside, 1 - frac, zero), torch.where(inside, frac, zero)


@torch.no_grad()
def sampling_weights(
    rois: Tensor,
    height: int,
    width: int,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """The (R, P*P, H*W) matrix mapping a feature map's pixels to each RoI's bins.

    Args:
        rois (Tensor): (R, 5) ``(batch index, x1, y1, x2, y2)`` in input pixels.
        height, width (int): the feature map's size.
        output_size (int): P.
        spatial_scale (float): feature pixels per input pixel.
        sampling_ratio (int): points per bin side; <= 0: ceil(RoI side / P), per RoI.
        aligned (bool): shift the boxes by -0.5 feature pixels (pixel centres).
    """
    dtype = rois.dtype if rois.dtype.is_floating_point else torch.float32
    boxes = rois[:, 1:].to(dtype) * spatial_scale - (0.5 if aligned else 0.0)
    x1, y1, x2, y2 = boxes.unbind(1)
    w, h = x2 - x1, y2 - y1
    if not aligned:  # torchvision's legacy minimum RoI size
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    p = int(output_size)
    if sampling_ratio > 0:
        gy = gx = torch.full_like(w, sampling_ratio, dtype=torch.long)
    else:
        gy, gx = torch.ceil(h / p).long(), torch.ceil(w / p).long()
    max_gy = max(int(gy.max()), 1) if len(rois) else 1
    max_gx = max(int(gx.max()), 1) if len(rois) else 1
    ys, vy = _axis_points(y1, h, p, gy, max_gy)  # (R, P, Gy)
    xs, vx = _axis_points(x1, w, p, gx, max_gx)  # (R, P, Gx)
    y_lo, y_hi, wy_lo, wy_hi = _bilinear(ys, height)
    x_lo, x_hi, wx_lo, wx_hi = _bilinear(xs, width)
    count = (gy * gx).clamp(min=1).to(dtype)
    wy_lo, wy_hi = wy_lo * vy, wy_hi * vy
    wx_lo, wx_hi = wx_lo * vx, wx_hi * vx
    r = len(rois)
    # every (bin row, bin col, sample row, sample col, corner): index and weight, (R, P, P, Gy, Gx)
    index, weight = [], []
    for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
        for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
            index.append(yi[:, :, None, :, None] * width + xi[:, None, :, None, :])
            weight.append(wy[:, :, None, :, None] * wx[:, None, :, None, :])
    index = torch.stack(index, -1).reshape(r, p * p, -1)
    weight = (torch.stack(weight, -1) / count[:, None, None, None, None, None]).reshape(
        r, p * p, -1
    )
    out = torch.zeros(r, p * p, height * width, dtype=dtype, device=rois.device)
    return out.scatter_add_(2, index, weight)


def roi_align_matmul(
    features: Tensor,
    rois: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """RoIAlign of ``features`` (N, C, H, W) at ``rois`` (R, 5): (R, C, P, P), as
    torchvision's ``roi_align``; differentiable in ``features`` (not in ``rois``)."""
    n, c, h, w = features.shape
    weights = sampling_weights(rois, h, w, output_size, spatial_scale, sampling_ratio, aligned)
    flat = features.reshape(n, c, h * w)[rois[:, 0].long()]  # (R, C, H*W)
    out = torch.bmm(flat, weights.to(features.dtype).transpose(1, 2))  # (R, C, P*P)
    return out.reshape(len(rois), c, output_size, output_size)


class ROIAlignAuto(nn.Module):
    """detectron2's ``ROIAlign`` interface (``forward(input, rois)``), through the matmul on
    CPU maps of at most ``max_pixels`` pixels and through torchvision otherwise."""

    def __init__(
        self,
        output_size,
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = True,
        max_pixels: int = MATMUL_MAX_PIXELS,
    ):
        super().__init__()
        size = output_size if isinstance(output_size, int) else output_size[0]
        if not isinstance(output_size, int) and tuple(output_size) != (size, size):
            raise ValueError(f"ROIAlignAuto pools square bins only, got {output_size}")
        self.output_size = int(size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.max_pixels = int(max_pixels)

    def uses_matmul(self, features: Tensor) -> bool:
        """True where the matmul path runs: a CPU map of at most ``max_pixels`` pixels."""
        return features.device.type == "cpu" and features.shape[-2] * features.shape[-1] <= (
            self.max_pixels
        )

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        args = (self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)
        if self.uses_matmul(input):
            return roi_align_matmul(input, rois, *args)
        if input.dtype in (torch.float16, torch.bfloat16):
            # sampled in float32, as the official RoIAlign under apex AMP (@amp.float_function)
            # and torchvision's autocast kernel: boxes cast to the features' dtype would be
            # rounded to 4 px at 1000 px in bfloat16 (torchvision's CPU kernel has no bfloat16)
            return tv_roi_align(input.float(), rois.float(), *args).to(input.dtype)
        return tv_roi_align(input, rois.to(input.dtype), *args)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, "
            f"max_pixels={self.max_pixels}"
        )
