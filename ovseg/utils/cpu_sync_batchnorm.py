"""The SyncBN of multi-process CPU runs (``ovseg.compat.cpu_sync_batchnorm``).

torch's ``nn.SyncBatchNorm`` refuses CPU tensors in multi-process training. detectron2's
``NaiveSyncBatchNorm`` runs there (gloo all-reduce) but differs from SyncBN in what a CPU run
can feed it: it computes the statistics of a bfloat16 input (CPU autocast, SOLVER.AMP bf16)
in bfloat16, where ``E[x^2] - E[x]^2`` cancels (a channel of mean 30 and std 1 came out with
a variance off by orders of magnitude, outputs off by hundreds), returns float32 for a 16-bit
input, updates the running variance with the biased variance, never counts
``num_batches_tracked`` and fails with momentum None. :class:`CpuSyncBatchNorm` computes as
SyncBN does: float32 statistics of all processes' elements (the mean, then the squares about
it), the input's dtype out, the unbiased running variance, momentum None as a cumulative average.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detectron2.layers import NaiveSyncBatchNorm
from detectron2.layers.batch_norm import differentiable_all_reduce
from detectron2.utils import comm

__all__ = ["CpuSyncBatchNorm"]


class CpuSyncBatchNorm(NaiveSyncBatchNorm):
    """``nn.SyncBatchNorm``'s training statistics over all processes, for CPU processes
    (two all-reduces a layer);
    one process, or evaluation: a plain BatchNorm. Inputs (N, C, ...) of any rank >= 2."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if comm.get_world_size() == 1 or not self.training:
            return super().forward(input)
        x = input.float()
        dims = [0, *range(2, x.dim())]
        channels, n = x.shape[1], x.numel() // max(x.shape[1], 1)  # n: elements per channel
        # two passes (the mean, then the squares about it), not E[x^2] - E[x]^2, which
        # cancels for a channel whose mean is large against its spread
        local = torch.cat([x.sum(dim=dims), x.new_full((1,), float(n))])
        if n == 0:
            local = local + x.sum()  # a gradient path for an empty input
        total = differentiable_all_reduce(local)
        count = total[-1].detach()
        mean = total[:channels] / count.clamp(min=1)
        shape = [1, -1] + [1] * (x.dim() - 2)
        centered = x - mean.reshape(shape)
        var = differentiable_all_reduce((centered * centered).sum(dim=dims)) / count.clamp(min=1)
        if self.track_running_stats and count > 0:
            self._update_running_stats(mean.detach(), var.detach(), count)
        scale = torch.rsqrt(var + self.eps)
        bias = -mean * scale
        if self.weight is not None:
            scale, bias = scale * self.weight, bias * self.weight + self.bias
        return (x * scale.reshape(shape) + bias.reshape(shape)).to(input.dtype)

    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = self.momentum
        if momentum is None:  # a cumulative moving average, as BatchNorm's
            momentum = 1.0 / float(self.num_batches_tracked)
        unbiased = var * count / (count - 1).clamp(min=1)
        self.running_mean.add_(momentum * (mean - self.running_mean))
        self.running_var.add_(momentum * (unbiased - self.running_var))
