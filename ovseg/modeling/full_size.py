"""Labels of a large image from its scores at the network input's size, a few classes at a time.

A model's "sem_seg" at an image's own size is (K, H, W): a 4000x3000 photo over ADE's 150
classes is 7.2 GB of float32 (40 GB over 847), most of it held only to take an argmax. Every
ovseg model that declares ``resizes_outputs_last`` computes that output at the network
input's size and resizes it bilinearly last (:func:`~ovseg.modeling.inference.
postprocess_to_original`). So callers that want labels at the image's size (the API, the
demo) ask the model for its output at the input size and resize here, a chunk of classes
at a time, keeping a running maximum (and, for logits, a running softmax denominator): the
numbers of the whole (K, H, W) tensor, each class being resized on its own (up to the last
bit: the resize kernel vectorises over a chunk's classes), in memory bounded by
``max_elements`` floats (twice that for logits, whose chunk is exponentiated beside it) plus
a few (H, W) maps. An image smaller than the network input gains nothing from this (its
scores at the input size are the larger), so callers ask for the input size only for
images larger than it (:func:`smaller_output_size`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..pseudo.labels import SCORE_KINDS
from .mask_classification.inference import resize_instances, resize_panoptic
from .vocabulary_scores import VocabularyPlan

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "ScoresAtSize",
    "labels_at_size",
    "outputs_at_size",
    "scores_at_size",
    "smaller_output_size",
]

# the floats one chunk of resized scores may hold: 2**26 (256 MB of float32), about five
# classes of a 4000x3000 photo at once
DEFAULT_MAX_ELEMENTS = 1 << 26


def _check(scores: Tensor, size: Sequence[int], kind: str) -> Tuple[int, int]:
    if not isinstance(scores, Tensor) or scores.dim() != 3:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a (K, h, w) tensor, got {shape}")
    if kind not in SCORE_KINDS:
        raise ValueError(f"score kind {kind!r} is not one of {list(SCORE_KINDS)}")
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"output size must be positive, got {tuple(size)}")
    return height, width


def _resized(chunk: Tensor, size: Tuple[int, int]) -> Tensor:
    """(c, h, w) -> (c, *size) float32, bilinearly as ``sem_seg_postprocess`` resizes."""
    chunk = chunk.float()
    if tuple(chunk.shape[-2:]) == size:
        return chunk
    return F.interpolate(chunk[None], size=size, mode="bilinear", align_corners=False)[0]


class ScoresAtSize:
    """A model's (K, h, w) scores standing for their (K, H, W) resize, which is never held.

    Equal to resizing the whole tensor bilinearly (``align_corners=False``), taking a softmax
    over the classes for logits and applying ``plan``, up to float rounding: the resize
    kernel vectorises over a chunk's classes and the softmax denominator is summed chunk by
    chunk, so values may differ in the last bit and a label only where two classes tie
    within it.

    Args:
        scores (Tensor): (K, h, w) a model's scores over ``plan.model_names`` (or K classes).
        size ((int, int)): the output (H, W).
        kind (str): "logits" (a softmax over the classes gives the probabilities) or
            "probabilities" (as given; the confidence is clipped to [0, 1]).
        plan (VocabularyPlan, optional): the added classes folded into "other" and a
            background by a threshold; None = the K classes as they are.
        max_elements (int): at most this many resized floats are held at once (at least one
            class's H * W).
    """

    def __init__(
        self,
        scores: Tensor,
        size: Sequence[int],
        *,
        kind: str,
        plan: Optional[VocabularyPlan] = None,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ):
        self.size = _check(scores, size, kind)
        if plan is not None and len(plan.model_names) != scores.shape[0]:
            raise ValueError(
                f"scores have {scores.shape[0]} classes but the plan scores "
                f"{len(plan.model_names)}"
            )
        self.scores, self.kind = scores, kind
        self.plan = None if plan is None or plan.identity else plan
        self.step = max(1, int(max_elements) // (self.size[0] * self.size[1]))
        self._labels: Optional[Tuple[Tensor, Tensor]] = None
        self._log_norm: Optional[Tensor] = None

    def at_size(self, size: Sequence[int]) -> ScoresAtSize:
        """The same scores resized to another ``size`` (H, W): a display's maps, never made at
        the image's size; itself when the size is its own."""
        if tuple(size) == tuple(self.size):
            return self
        step_elements = self.step * self.size[0] * self.size[1]
        return ScoresAtSize(
            self.scores, size, kind=self.kind, plan=self.plan, max_elements=step_elements
        )

    def to(self, device) -> ScoresAtSize:
        """Itself with its scores (and what :meth:`labels` made) on ``device``."""
        self.scores = self.scores.to(device)
        if self._labels is not None:
            self._labels = tuple(t.to(device) for t in self._labels)
        if self._log_norm is not None:
            self._log_norm = self._log_norm.to(device)
        return self

    @property
    def num_classes(self) -> int:
        """How many classes the final scores have (``len(plan.names)``, else K)."""
        return len(self.plan.names) if self.plan is not None else self.scores.shape[0]

    def _chunks(self, start: int = 0, stop: Optional[int] = None):
        stop = self.scores.shape[0] if stop is None else stop
        for k in range(start, stop, self.step):
            yield k, _resized(self.scores[k : min(k + self.step, stop)], self.size)

    def _stream(self) -> Tuple[Tensor, Tensor]:
        """(argmax over the model's classes, confidence), with the log softmax denominator
        of logits kept for :meth:`probabilities`."""
        best = label = total = None
        for start, chunk in self._chunks():
            value, index = chunk.max(dim=0)
            if best is None:
                best, label = value, index
                if self.kind == "logits":
                    total = (chunk - best).exp_().sum(dim=0)
                continue
            better = value > best  # the first maximum wins ties, as argmax does
            label = torch.where(better, index + start, label)
            if self.kind == "logits":
                top = torch.maximum(best, value)
                total = total * (best - top).exp_() + (chunk - top).exp_().sum(dim=0)
                best = top
            else:
                best = torch.maximum(best, value)
            del chunk
        if self.kind == "logits":
            self._log_norm = best + total.log()
            return label, total.reciprocal()
        return label, best.clamp(0.0, 1.0)

    def labels(self) -> Tuple[Tensor, Tensor]:
        """(labels (H, W) int64 indexing ``plan.names`` (or the K classes), confidence (H, W)
        float32: the best class's probability, the threshold where the background wins)."""
        if self._labels is None:
            label, confidence = self._stream()
            plan = self.plan
            if plan is not None:
                label = plan.class_index(label)
                if plan.background_index is not None:
                    background = confidence < plan.background_threshold
                    label = label.masked_fill(background, plan.background_index)
                    confidence = confidence.masked_fill(background, plan.background_threshold)
            self._labels = (label, confidence)
        return self._labels

    def _word_probs(self, start: int, stop: int) -> Tensor:
        """(H, W) the largest probability of the model's classes start..stop-1."""
        out = None
        for _, chunk in self._chunks(start, stop):
            probs = (chunk - self._log_norm).exp_() if self.kind == "logits" else chunk
            top = probs.amax(dim=0)
            out = top if out is None else torch.maximum(out, top)
        if out is None:  # no classes: an "other" whose added classes were all the user's
            out = torch.zeros(self.size, dtype=torch.float32, device=self.scores.device)
        return out

    def _one(self, index: int) -> Tensor:
        plan, num = self.plan, self.scores.shape[0]
        if plan is None:
            return self._word_probs(index, index + 1)
        label, _ = self.labels()
        if index == plan.background_index:
            return torch.where(label == index, plan.background_threshold, 0.0)
        if plan.background_index is not None and index > plan.background_index:
            index -= 1
        if plan.augmented and index == plan.num_user:  # "other": its best added class
            return self._word_probs(plan.num_user, num)
        return self._word_probs(index, index + 1)

    def probabilities(self, classes: Optional[Sequence[int]] = None) -> Tensor:
        """(len(classes), H, W) float32 probabilities of the final classes (default: all K,
        held at once), each made on its own (``"other"``: a few added classes at a time)."""
        if classes is None:
            probs = _resized(self.scores, self.size)
            if self.kind == "logits":
                probs = probs.softmax(dim=0)
            probs = probs if self.plan is None else self.plan.probabilities(probs[None])[0]
            # never the held scores themselves: a caller's edit would change later maps
            return probs.clone() if probs.data_ptr() == self.scores.data_ptr() else probs
        classes = [int(k) for k in classes]
        bad = [k for k in classes if not 0 <= k < self.num_classes]
        if bad:
            raise ValueError(f"class indices {bad} are outside [0, {self.num_classes})")
        if self.kind == "logits" or self.plan is not None:
            self.labels()  # the softmax denominator, the background's pixels
        maps = [self._one(k) for k in classes]
        if not maps:
            return self.scores.new_zeros((0, *self.size), dtype=torch.float32)
        return torch.stack(maps)


def smaller_output_size(input_size: Sequence[int], size: Sequence[int]) -> Tuple[int, int]:
    """The size a ``resizes_outputs_last`` model is asked for: its (unpadded) input size when
    that holds fewer pixels than the image's ``size``, else ``size`` (a thumbnail enlarged by
    the test resize: its scores at its own size are the smaller)."""
    h_in, w_in = (int(v) for v in input_size)
    height, width = (int(v) for v in size)
    return (h_in, w_in) if h_in * w_in < height * width else (height, width)


def labels_at_size(
    scores: Tensor,
    size: Sequence[int],
    *,
    kind: str,
    plan: Optional[VocabularyPlan] = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Tuple[Tensor, Tensor]:
    """:meth:`ScoresAtSize.labels` of ``scores`` resized to ``size``: the argmax and the
    confidence of the whole resized tensor (as :func:`ovseg.pseudo.labels.pixel_labels` takes
    them), a few classes at a time."""
    return ScoresAtSize(scores, size, kind=kind, plan=plan, max_elements=max_elements).labels()


def scores_at_size(
    scores: Tensor, size: Sequence[int], *, kind: str, plan: Optional[VocabularyPlan] = None
) -> Tensor:
    """The whole (len(plan.names), H, W) float32 probabilities at ``size`` (softmax for logits,
    then ``plan``): what :func:`labels_at_size` takes the argmax of, held at once."""
    return ScoresAtSize(scores, size, kind=kind, plan=plan).probabilities()


def outputs_at_size(output: dict, size: Sequence[int]) -> dict:
    """A ``resizes_outputs_last`` model's "instances" and "panoptic_seg" at its input size,
    resized to ``size`` as the model resizes them (nearest neighbour; "sem_seg" is left for
    :func:`labels_at_size`)."""
    size = tuple(int(v) for v in size)
    out = dict(output)
    if "instances" in out and tuple(out["instances"].image_size) != size:
        out["instances"] = resize_instances(out["instances"], size)
    if "panoptic_seg" in out:
        ids, segments = out["panoptic_seg"]
        if tuple(ids.shape[-2:]) != size:
            ids, kept = resize_panoptic(ids, segments or [], size)
            out["panoptic_seg"] = (ids, kept if segments is not None else None)
    return out
