"""The divisor of losses summed over masks: Mask2Former's, FreeSeg's and ZegCLIP's
``num_masks``, the masks of a step's images over all processes divided by the processes.

The official criteria (Mask2Former ``criterion.py:225-231``, FreeSeg ``criterion.py:200-206``,
ZegCLIP ``models/losses/criterion.py:203-209``) all-reduce the count and divide it by the
world size, so a batch split over processes trains as the whole batch. A step accumulated over
SOLVER.ACCUMULATE_STEPS forwards (ovseg/engine/train_loop.py) stands in for that many times
the processes, so its divisor is the count over all the step's forwards and processes divided
by (processes x forwards); a forward alone cannot know it, so the step sets it:

- ``prefetch`` (FreeSeg, whose classification loss is a mean and keeps its own divisor): the
  step draws its batches first, the model counts each one's masks (``count_masks``) and every
  forward divides by the step's divisor (:attr:`MaskCount.fixed`);
- otherwise (ZegCLIP, every loss of which is over masks): the forwards record their counts
  and divide by the step's first forward's divisor (the mean over processes, the same in all
  of them, so the losses and fp16 gradients keep the size they have without accumulation),
  and the step rescales the gradients and losses to the step's divisor afterwards
  (:attr:`MaskCount.provisional`).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from detectron2.utils import comm

__all__ = ["MaskCount", "step_normalizer"]


class MaskCount:
    """A model's mask-count divisor (:meth:`normalizer`), which an accumulating step sets.

    Args:
        prefetch (bool): the model has ``count_masks(batched_inputs) -> float``, a batch's
            count before its forward (see the module's docstring).
    """

    def __init__(self, prefetch: bool = False) -> None:
        self.prefetch = bool(prefetch)
        #: the step's divisor, set by an accumulating step (prefetch models)
        self.fixed: Optional[float] = None
        #: the counts of the step's forwards so far (models without prefetch)
        self.recorded: Optional[List[Tensor]] = None
        #: the divisor the recorded forwards used: their first's, over processes
        self.provisional: Optional[Tensor] = None

    def normalizer(self, count: Tensor) -> Tensor:
        """The divisor for a forward whose targets hold ``count`` masks (a scalar tensor)."""
        count = torch.as_tensor(count, dtype=torch.float32).detach()
        if self.recorded is not None:
            self.recorded.append(count.clone())
            if self.provisional is None:
                self.provisional = _mean_over_processes(count).clamp(min=1)
            return self.provisional.to(count.device)
        if self.fixed is not None:
            return torch.full_like(count, self.fixed)
        return _mean_over_processes(count).clamp(min=1)

    def host_normalizer(self, count: float) -> Optional[float]:
        """:meth:`normalizer` of a count the host holds, as the host number it reads back (a
        float32), where no other process's count or recorded forward is needed; None where
        they are (then :meth:`normalizer` on a device tensor)."""
        if self.recorded is not None:
            return None
        if self.fixed is not None:
            return float(np.float32(self.fixed))
        if comm.get_world_size() > 1:
            return None
        return float(np.float32(max(float(count), 1.0)))


def _mean_over_processes(count: Tensor) -> Tensor:
    world = comm.get_world_size()
    if world == 1:
        return count
    count = count.clone()
    torch.distributed.all_reduce(count)
    return count / world


def step_normalizer(counts: Sequence, forwards: int) -> float:
    """The divisor of a step of ``forwards`` accumulated forwards whose masks (this process's)
    were ``counts``: their sum over processes / (processes x forwards), at least 1."""
    total = sum(float(c) for c in counts)
    # a gather of host numbers: any backend (NCCL reduces device tensors only), once a step
    totals = comm.all_gather(total) if comm.get_world_size() > 1 else [total]
    return max(sum(totals) / (len(totals) * forwards), 1.0)
