# Follows Deformable DETR's multi-scale deformable attention as vendored by Mask2Former
# (mask2former/modeling/pixel_decoder/ops/modules/ms_deform_attn.py and
# ops/functions/ms_deform_attn_func.py), re-written.
"""Multi-scale deformable attention: each query attends to a few sampled points per head and
level, placed at learned offsets around its reference point.

The sampling runs in pure PyTorch through ``grid_sample`` (the official reference,
``ms_deform_attn_core_pytorch``, ms_deform_attn_func.py:52-72): differentiable in the values,
the locations and the weights, and the only path on CPU. Deformable DETR's compiled CUDA op
(module ``MultiScaleDeformableAttention``) is used for CUDA tensors when it is importable;
it computes the same thing faster.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

try:  # the optional compiled op (Deformable DETR's ops/make.sh)
    import MultiScaleDeformableAttention as _MSDA
except ImportError:  # pragma: no cover - depends on the machine
    _MSDA = None

__all__ = ["MSDeformAttn", "ms_deform_attn_core"]


def ms_deform_attn_core(
    value: Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Bilinearly sample every level at the given locations and sum them with the weights.

    A location (x, y) in [0, 1] is a fraction of the map's width / height with pixel centres
    at (j + 0.5) / W (``align_corners=False``); points outside the map read zeros.

    Args:
        value (Tensor): (N, S, M, D), the levels' flattened maps, S = sum of H_l * W_l,
            M heads of D channels.
        spatial_shapes: the (H_l, W_l) of each of the L levels, in the order of ``value``.
        sampling_locations (Tensor): (N, Lq, M, L, P, 2) as (x, y) in [0, 1].
        attention_weights (Tensor): (N, Lq, M, L, P).

    Returns:
        Tensor: (N, Lq, M * D).
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    if len(shapes) != num_levels or sum(h * w for h, w in shapes) != value.shape[1]:
        raise ValueError(
            f"spatial_shapes {shapes} do not match value {tuple(value.shape)} and "
            f"{num_levels} sampled levels; give one (H, W) per level, summing to S"
        )
    levels = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] convention
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = levels[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (N*M, D, Lq, L*P) weighted by (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * p)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


class _CompiledMSDeformAttn(Function):
    """Autograd wrapper of the compiled op (ms_deform_attn_func.py:32-49)."""

    @staticmethod
    def forward(ctx, value, shapes, level_start, locations, weights, im2col_step):
        ctx.im2col_step = im2col_step
        out = _MSDA.ms_deform_attn_forward(
            value, shapes, level_start, locations, weights, im2col_step
        )
        ctx.save_for_backward(value, shapes, level_start, locations, weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, shapes, level_start, locations, weights = ctx.saved_tensors
        grads = _MSDA.ms_deform_attn_backward(
            value, shapes, level_start, locations, weights, grad_output, ctx.im2col_step
        )
        return grads[0], None, None, grads[1], grads[2], None


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), as in Mask2Former's pixel decoder.

    Args:
        d_model: channels of queries and values.
        n_levels: feature levels sampled.
        n_heads: attention heads (``d_model`` must divide by it).
        n_points: sampled points per head and level.
        use_compiled_op: use the compiled op for CUDA tensors when it is importable.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        use_compiled_op: bool = True,
    ):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = (
            d_model,
            n_levels,
            n_heads,
            n_points,
        )
        self.use_compiled_op = use_compiled_op
        self.im2col_step = 128
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init (ms_deform_attn.py:66-80): head h's k-th point starts k + 1 steps
        away in direction 2 pi h / M, the weights start uniform."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.constant_(lin.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Optional[Tensor] = None,
        shapes: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> Tensor:
        """Attend from each query to points around its reference point on every level.

        Args:
            query (Tensor): (N, Lq, C).
            reference_points (Tensor): (N, Lq, L, 2) as (x, y) in [0, 1] of each level.
            input_flatten (Tensor): (N, S, C), the levels' flattened maps.
            spatial_shapes (Tensor): long (L, 2), each level's (H, W).
            level_start_index (Tensor): long (L,), where each level starts in S.
            padding_mask (Tensor, optional): bool (N, S), True at padding (values zeroed).
            shapes: ``spatial_shapes`` as the host holds them (None: read back from it, a
                wait for the device at each call of the PyTorch path).

        Returns:
            Tensor: (N, Lq, C).
        """
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        if reference_points.shape[-1] != 2:
            raise ValueError(
                f"reference_points must end in 2 (x, y), got {tuple(reference_points.shape)}"
            )
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(
            n, lq, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(n, lq, self.n_heads, -1).softmax(-1)
        weights = weights.view(n, lq, self.n_heads, self.n_levels, self.n_points)
        # offsets are in pixels of each level: normalise by its (W, H)
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets)
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normalizer[None, None, None, :, None, :]
        )
        if self.use_compiled_op and _MSDA is not None and value.is_cuda:
            out = _CompiledMSDeformAttn.apply(
                value, spatial_shapes, level_start_index, locations, weights, self.im2col_step
            )
        else:
            if shapes is None:
                shapes = [tuple(x) for x in spatial_shapes.tolist()]
            out = ms_deform_attn_core(value, shapes, locations, weights)
        return self.output_proj(out)
