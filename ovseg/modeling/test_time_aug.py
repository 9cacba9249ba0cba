# Follows the multi-scale + flip evaluator of the official LSeg
# (isl-org/lang-seg additional_utils/encoding_models.py: MultiEvalModule), re-written.
"""Multi-scale and flip test-time augmentation shared by every meta-architecture.

Each scale resizes the network input (bilinear, ``align_corners=True`` as the official
evaluator) so that its long (or short) side is ``ceil(base_size * scale)``, runs the usual
whole or sliding-window inference on it (each network input also mirrored, its scores
mirrored back and added, as the official evaluator does per window), resizes the scores
back to the input size and merges them over scales and flips: summed (the official LSeg:
``scores += ...`` over scales, ``output += flip`` per window) or averaged. What is merged
is chosen by the caller: logits (then turned into the model's declared score kind once, at
the end) or the model's own scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from .inference import semantic_inference

__all__ = ["MERGES", "RESIZE_SIDES", "TestTimeAug", "aug_size", "multiscale_inference"]

# "logits_sum": the official LSeg; "logits_mean": the same up to the temperature of the
# final softmax; "scores_mean": the model's declared scores (e.g. probabilities) averaged
MERGES = ("logits_sum", "logits_mean", "scores_mean")
RESIZE_SIDES = ("long", "short")


@dataclass(frozen=True)
class TestTimeAug:
    """Multi-scale / flip test-time augmentation (TEST.AUG.*).

    Args:
        scales: resize factors of ``base_size``.
        base_size (int): the side length scale 1 gives; 0 = the input's own side.
        resize_side (str): "long" (official LSeg) or "short": which side gets the length.
        flip (bool): also run the horizontally mirrored input.
        merge (str): one of :data:`MERGES`.
    """

    __test__ = False  # not a pytest class, despite its name

    scales: tuple[float, ...] = (1.0,)
    base_size: int = 0
    resize_side: str = "long"
    flip: bool = True
    merge: str = "logits_sum"

    def __post_init__(self):
        scales = tuple(float(s) for s in self.scales)
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f"TEST.AUG.SCALES must be positive factors, got {self.scales!r}")
        object.__setattr__(self, "scales", scales)
        if int(self.base_size) < 0:
            raise ValueError(f"TEST.AUG.BASE_SIZE must be >= 0, got {self.base_size}")
        if self.resize_side not in RESIZE_SIDES:
            raise ValueError(
                f"TEST.AUG.RESIZE_SIDE={self.resize_side!r} is not one of {list(RESIZE_SIDES)}"
            )
        if self.merge not in MERGES:
            raise ValueError(f"TEST.AUG.MERGE={self.merge!r} is not one of {list(MERGES)}")

    @property
    def uses_logits(self) -> bool:
        return self.merge.startswith("logits")

    @classmethod
    def from_config(cls, cfg) -> TestTimeAug | None:
        """The augmentation of TEST.AUG, or None when TEST.AUG.ENABLED is False."""
        aug = cfg.TEST.AUG
        if not aug.ENABLED:
            return None
        return cls(
            scales=tuple(aug.SCALES),
            base_size=int(aug.BASE_SIZE),
            resize_side=aug.RESIZE_SIDE,
            flip=bool(aug.FLIP),
            merge=aug.MERGE,
        )


def aug_size(height: int, width: int, scale: float, base_size: int, side: str) -> tuple[int, int]:
    """The (height, width) an input is resized to at ``scale``, keeping its aspect ratio.

    The chosen side becomes ``ceil(base * scale)`` (``base`` = ``base_size``, or that side of
    the input when 0) and the other ``int(other * new / side + 0.5)``, as the official
    evaluator rounds.
    """
    first_is_h = (height > width) if side == "long" else (height <= width)
    ref, other = (height, width) if first_is_h else (width, height)
    new = int(math.ceil((base_size or ref) * scale))
    new_other = max(int(1.0 * other * new / ref + 0.5), 1)
    return (new, new_other) if first_is_h else (new_other, new)


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def multiscale_inference(
    predict_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    aug: TestTimeAug,
    *,
    mode: str = "whole",
    window: int | Sequence[int] = (512, 512),
    stride: int | Sequence[int] = (426, 426),
    layout: str = "flush",
    pad_value: Tensor | None = None,
    windows_per_forward: int = 1,
) -> Tensor:
    """Scores merged over the scales and flips of ``aug``, at the input size.

    Args:
        predict_fn (callable): (b, 3, h, w) normalised images -> (b, K, h', w') scores.
        images (Tensor): (B, 3, H, W) normalised network inputs.
        aug (TestTimeAug): scales, flip, merge rule.
        mode, window, stride, layout, pad_value, windows_per_forward: the inference of each
            resized input, as :func:`ovseg.modeling.inference.semantic_inference`.

    Returns:
        Tensor: (B, K, H, W) merged scores (float32 or wider).
    """
    height, width = images.shape[-2:]
    if aug.flip:
        # mirrored per network input, as the official evaluator flips each window
        def views_fn(x: Tensor) -> Tensor:
            return predict_fn(x) + predict_fn(x.flip(-1)).flip(-1)
    else:
        views_fn = predict_fn
    total = None
    for scale in aug.scales:
        resized = _resize(images, aug_size(height, width, scale, aug.base_size, aug.resize_side))
        out = semantic_inference(views_fn, resized, mode=mode, window=window, stride=stride,
                                 layout=layout, pad_value=pad_value,
                                 windows_per_forward=windows_per_forward)  # fmt: skip
        out = _resize(out.float() if out.dtype.itemsize < 4 else out, (height, width))
        total = out if total is None else total + out
    if aug.merge == "logits_sum":
        return total
    return total / (len(aug.scales) * (2 if aug.flip else 1))
