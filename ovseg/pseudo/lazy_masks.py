"""Proposal masks computed only for the proposals that are asked for.

XPM matches caption nouns to the region embeddings of every RPN proposal and runs the mask
head only at the winners' boxes afterwards (the "mask pass",
hbdat/cvpr22_cross_modal_pseudo_labeling @b460423,
``maskrcnn_benchmark/modeling/detector/st_generalized_rcnn.py:264-272``). A proposer gives a
:class:`LazyMasks` as ``pred_masks`` so that labelling over 1000 proposals pastes a handful
of masks instead of 1000 full-image ones.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["LazyMasks", "mask_probabilities"]


class LazyMasks:
    """(N, H, W) mask probabilities computed on demand, only for the rows asked for.

    It stands in for the ``pred_masks`` tensor of an :class:`~detectron2.structures.Instances`:
    ``len()`` and indexing (an int, a slice, a bool or an index tensor, as ``Instances``
    indexes its fields) give the LazyMasks of those rows and compute nothing;
    :meth:`probabilities` computes them.

    Args:
        compute: ``compute(rows) -> (len(rows), H, W)`` float probabilities of ``rows`` (a
            long tensor indexing the N proposals; may be empty).
        length (int): N.
        image_size: (H, W).
        rows (Tensor, optional): the rows of the N this one holds (default: all, in order).
        device: where the default ``rows`` live (the proposals' boxes' device).
    """

    def __init__(
        self,
        compute: Callable[[Tensor], Tensor],
        length: int,
        image_size: Tuple[int, int],
        rows: Optional[Tensor] = None,
        device: Union[str, torch.device, None] = None,
    ):
        self._compute = compute
        self._length = int(length)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.rows = torch.arange(self._length, device=device) if rows is None else rows.long()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item) -> LazyMasks:
        rows = self.rows[item]
        return LazyMasks(self._compute, self._length, self.image_size, rows.reshape(-1))

    def __repr__(self) -> str:
        return f"LazyMasks({len(self)} of {self._length}, image_size={self.image_size})"

    def probabilities(self) -> Tensor:
        """(R, H, W) float probabilities of the rows (the mask head runs now, on them only)."""
        out = self._compute(self.rows)
        if tuple(out.shape) != (len(self), *self.image_size):
            raise ValueError(
                f"a lazy mask computation gave {tuple(out.shape)} for {len(self)} rows at "
                f"{self.image_size}; it must return (rows, H, W) probabilities"
            )
        return out

    def resized(self, height: int, width: int) -> LazyMasks:
        """These masks bilinearly resized to (height, width) when computed (as
        :func:`~ovseg.pseudo.instances.proposals_at_size` resizes a tensor's)."""
        compute, size = self._compute, (int(height), int(width))

        def resize(rows: Tensor) -> Tensor:
            masks = compute(rows).float()
            if len(masks) == 0:
                return masks.new_zeros((0, *size))
            return F.interpolate(masks[None], size=size, mode="bilinear")[0]

        return LazyMasks(resize, self._length, size, self.rows)


def mask_probabilities(masks: Union[Tensor, LazyMasks], rows: Optional[Tensor] = None) -> Tensor:
    """(R, H, W) probabilities of ``rows`` (default: all) of a tensor or a :class:`LazyMasks`."""
    if rows is not None:
        masks = masks[rows]
    return masks.probabilities() if isinstance(masks, LazyMasks) else masks
