"""The frozen CLIP image tower's matrix weights kept in bfloat16 (MODEL.CLIP.FROZEN_DTYPE).

Under bf16 autocast every linear layer, convolution and matrix product casts its float32
weights to bf16 at every use; it caches the casts of weights that require gradients only,
so a frozen tower's weights are cast again at every step (hundreds of copies per step for
a ViT-B/16). :func:`cast_frozen_tower` casts exactly those weights once: the bf16 values
are the ones autocast would make (round to nearest), so under autocast the tower computes
the same numbers. Norms, embeddings and other weights autocast leaves in float32 stay so.

A cast tower is run under bf16 autocast wherever it is called outside it (evaluation,
inference): :func:`tower_autocast`. The tower's weights are never in checkpoints (the
teacher's come from MODEL.CLIP), so checkpoints are unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

__all__ = [
    "FROZEN_DTYPES",
    "cast_frozen_tower",
    "needs_autocast",
    "tower_autocast",
]

# MODEL.CLIP.FROZEN_DTYPE -> dtype ("" = the weights as loaded)
FROZEN_DTYPES = {"": None, "bfloat16": torch.bfloat16}
# the parameters of these modules feed only ops autocast runs in its lower precision
_MATRIX_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ATTENTION_WEIGHTS = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight",
                      "v_proj_weight")  # fmt: skip


def _cast(module: nn.Module, name: str, dtype: torch.dtype) -> int:
    p = getattr(module, name, None)
    if not isinstance(p, torch.Tensor) or not p.is_floating_point() or p.dtype == dtype:
        return 0
    p.data = p.data.to(dtype)
    return 1


def cast_frozen_tower(visual: nn.Module, dtype: Optional[torch.dtype]) -> int:
    """Cast a frozen image tower's linear, convolution and attention-projection weights
    (and a ViT's output projection ``proj``) to ``dtype``, in place, once.

    Args:
        visual (nn.Module): an open_clip image tower, every parameter frozen.
        dtype: the autocast dtype (torch.bfloat16); None leaves the tower as it is.

    Returns:
        int: the number of tensors cast.
    """
    if dtype is None:
        return 0
    trainable = [n for n, p in visual.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(
            f"MODEL.CLIP.FROZEN_DTYPE casts a frozen tower, but {len(trainable)} of its "
            f"parameters train ({trainable[:3]}...); set MODEL.CLIP.FROZEN_DTYPE ''"
        )
    count = 0
    for module in visual.modules():
        if isinstance(module, _MATRIX_MODULES):
            count += _cast(module, "weight", dtype) + _cast(module, "bias", dtype)
        elif isinstance(module, nn.MultiheadAttention):
            count += sum(_cast(module, name, dtype) for name in _ATTENTION_WEIGHTS)
    if isinstance(getattr(visual, "proj", None), nn.Parameter):
        count += _cast(visual, "proj", dtype)  # x @ proj: a matrix product
    visual.frozen_dtype = dtype
    return count


def needs_autocast(visual: nn.Module, device_type: str) -> bool:
    """Whether ``visual`` is cast and no autocast of its dtype is active (evaluation,
    inference): its float32 inputs would meet bf16 weights."""
    dtype = getattr(visual, "frozen_dtype", None)
    if dtype is None:
        return False
    return not (
        torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == dtype
    )


def tower_autocast(visual: nn.Module, device_type: str):
    """Autocast in the frozen dtype of ``visual`` where :func:`needs_autocast`; else a no-op."""
    if not needs_autocast(visual, device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=visual.frozen_dtype)
