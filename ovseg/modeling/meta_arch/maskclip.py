# Follows the official MaskCLIP (chongzhou96/MaskCLIP: mmseg MaskClipHead.cls_seg and
# refine_output), re-written; the dense embeddings come from ovseg.clip.
"""MaskCLIP: training-free open-vocabulary segmentation from a frozen CLIP's dense embeddings.

Per location, the cosine similarity of the teacher's dense embedding to each class's text
embedding is a logit. Two test-time refinements of the paper can follow:

- prompt denoising: with p = softmax(logit_scale * logits) over the classes, a class whose
  largest p anywhere in the image is below a threshold is dropped (its logits set to -100,
  as the official code does);
- key smoothing: at locations whose largest p is below a threshold, p is replaced by
  ``A @ p`` with A = k k^T the affinity of the last attention layer's keys.

The model returns softmax probabilities (smoothed locations: ``A @ p``, not renormalised, as
the official code leaves them), so the argmax is MaskCLIP's prediction and the scores of
sliding windows and pseudo-label confidences live on one scale.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ...clip import CLIPTeacher, build_clip_teacher, get_templates
from ..test_time_aug import TestTimeAug
from ..text_classifier import TextClassifier
from .base import OpenVocabSegmentor

__all__ = [
    "DROPPED_LOGIT",
    "KEY_NORMALIZATIONS",
    "MaskCLIP",
    "cosine_logits",
    "key_smoothing",
    "prompt_denoise",
    "refine_scores",
]

# the value the official code gives a dropped class's cosine logits (cosines lie in [-1, 1])
DROPPED_LOGIT = -100.0
# "positions": the official code's F.normalize(k, p=2) on (B, N, C) keys, i.e. each channel
# normalised over the N locations; "channels": each location's key normalised (cosine
# affinity, as the paper describes it)
KEY_NORMALIZATIONS = ("positions", "channels")


def cosine_logits(dense: Tensor, text: Tensor, normalize_text: bool = True) -> Tensor:
    """Cosine similarity of every location's embedding to every class's text embedding.

    Args:
        dense (Tensor): (B, D, h, w) dense embeddings (normalised here again).
        text (Tensor): (K, D) text embeddings (normalised here again with
            ``normalize_text``; an embeddings file's rows are used as stored,
            ``maskclip_head.py:123-125``).

    Returns:
        Tensor: (B, K, h, w) cosines in [-1, 1].
    """
    if dense.dim() != 4 or text.dim() != 2 or dense.shape[1] != text.shape[1]:
        raise ValueError(
            f"dense embeddings {tuple(dense.shape)} and text embeddings {tuple(text.shape)} "
            "must be (B, D, h, w) and (K, D) with the same D"
        )
    # float32 under autocast too: there the product would run in bf16/fp16, whose cosines
    # (times the logit scale of 100) move the teacher's argmax and pseudo-labels
    with torch.autocast(dense.device.type, enabled=False):
        dense = F.normalize(dense.float(), dim=1)
        text = text.float().to(dense.device)
        text = F.normalize(text, dim=1) if normalize_text else text
        return torch.einsum("bdhw,kd->bkhw", dense, text)


def prompt_denoise(logits: Tensor, *, threshold: float = 0.5, logit_scale: float = 100.0) -> Tensor:
    """Drop the classes that are nowhere confident in an image.

    With p = softmax(logit_scale * logits) over classes, class c of image b is dropped when
    ``max over locations of p[b, c] < threshold``: its logits become ``DROPPED_LOGIT``. If
    every class is dropped, the image's scores become uniform (as in the official code).

    Args:
        logits (Tensor): (B, K, h, w) cosine logits.
        threshold (float): minimum of a kept class's largest probability, in [0, 1].
        logit_scale (float): softmax temperature inverse (CLIP's 100).

    Returns:
        Tensor: (B, K, h, w) logits, a new tensor.
    """
    probs = F.softmax(logits * logit_scale, dim=1)
    dropped = probs.flatten(2).amax(dim=2) < threshold  # (B, K)
    return logits.masked_fill(dropped[:, :, None, None], DROPPED_LOGIT)


def key_smoothing(
    probs: Tensor, keys: Tensor, *, threshold: float = 1.0, normalization: str = "positions"
) -> Tensor:
    """Replace the scores of low-confidence locations by key-affinity-weighted scores.

    With k the keys as (N, C) per image (N = h * w locations) L2-normalised per
    ``normalization``, and A = k k^T (N, N), a location whose largest probability is below
    ``threshold`` gets ``(A @ p)`` at that location; the others keep p.

    Args:
        probs (Tensor): (B, K, h, w) class probabilities.
        keys (Tensor): (B, C, h, w) last-layer keys of the same locations.
        threshold (float): locations with ``max_k p < threshold`` are smoothed (1.0, the
            official configs' value, smooths every location that is not certain).
        normalization (str): "positions" (the official code: each channel over the
            locations) or "channels" (each location's key: cosine affinity).

    Returns:
        Tensor: (B, K, h, w) scores, a new tensor.
    """
    if normalization not in KEY_NORMALIZATIONS:
        raise ValueError(
            f"key normalization {normalization!r} is not one of {list(KEY_NORMALIZATIONS)}"
        )
    if keys.dim() != 4 or probs.dim() != 4 or keys.shape[0] != probs.shape[0]:
        raise ValueError(f"probs {tuple(probs.shape)} and keys {tuple(keys.shape)} must be 4-d")
    if keys.shape[-2:] != probs.shape[-2:]:
        raise ValueError(
            f"keys' grid {tuple(keys.shape[-2:])} differs from the scores' grid "
            f"{tuple(probs.shape[-2:])}"
        )
    b, num_classes, h, w = probs.shape
    p = probs.float().flatten(2).transpose(1, 2)  # (B, N, K)
    k = keys.float().flatten(2).transpose(1, 2)  # (B, N, C)
    k = F.normalize(k, dim=1 if normalization == "positions" else 2)
    with torch.autocast(k.device.type, enabled=False):  # float32 scores under autocast too
        # (k k^T) p computed as k (k^T p): O(N C K) instead of an (N, N) affinity matrix
        smoothed = k @ (k.transpose(1, 2) @ p)
    low = p.amax(dim=2, keepdim=True) < threshold  # (B, N, 1)
    out = torch.where(low, smoothed, p)
    return out.transpose(1, 2).reshape(b, num_classes, h, w)


def refine_scores(
    logits: Tensor,
    keys: Optional[Tensor] = None,
    *,
    logit_scale: float = 100.0,
    prompt_denoise_threshold: Optional[float] = None,
    key_smoothing_threshold: Optional[float] = None,
    key_normalization: str = "positions",
) -> Tensor:
    """Cosine logits to MaskCLIP's scores: [prompt denoising], softmax, [key smoothing].

    Args:
        logits (Tensor): (B, K, h, w) cosine logits.
        keys (Tensor, optional): (B, C, h, w) keys; needed for key smoothing.
        logit_scale (float): multiplies the logits before the softmax.
        prompt_denoise_threshold (float, optional): None = no prompt denoising.
        key_smoothing_threshold (float, optional): None = no key smoothing.
        key_normalization (str): see :func:`key_smoothing`.

    Returns:
        Tensor: (B, K, h, w) scores.
    """
    if prompt_denoise_threshold is not None:
        logits = prompt_denoise(logits, threshold=prompt_denoise_threshold, logit_scale=logit_scale)
    probs = F.softmax(logits * logit_scale, dim=1)
    if key_smoothing_threshold is not None:
        if keys is None:
            raise ValueError("key smoothing needs the keys (dense_embeddings(return_keys=True))")
        probs = key_smoothing(
            probs, keys, threshold=key_smoothing_threshold, normalization=key_normalization
        )
    return probs


def _input_divisibility(
    teacher: CLIPTeacher, size_divisibility: int, pad_to_stride: bool, stretch_grid: bool
) -> int:
    """What a forward pads its input to: ``size_divisibility`` (<= 0: none), and with
    ``pad_to_stride`` a multiple of the tower's stride as well."""
    if teacher.tower is None:
        raise ValueError(
            f"MaskCLIP needs a ViT or ModifiedResNet CLIP vision tower; teacher "
            f"{teacher.name!r} has {type(teacher.model.visual).__name__}"
        )
    if not pad_to_stride and not stretch_grid:
        raise ValueError(
            "MODEL.MASKCLIP.PAD_TO_STRIDE False needs MODEL.MASKCLIP.STRETCH_GRID True: an "
            "unpadded input's grid can end before the input does, so it must be resized "
            "onto the input rather than cropped cell by cell"
        )
    d = int(size_divisibility)
    if not pad_to_stride:
        return max(d, 1)
    stride = int(teacher.stride)
    return math.lcm(stride, d) if d > 0 else stride


def _check_key_normalization(value: str) -> str:
    if value not in KEY_NORMALIZATIONS:
        raise ValueError(
            f"key normalization {value!r} (MODEL.MASKCLIP.KEY_NORMALIZATION) is not one of "
            f"{list(KEY_NORMALIZATIONS)}"
        )
    return value


def _check_threshold(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be a probability in [0, 1], got {value}")
    return value


@META_ARCH_REGISTRY.register()
class MaskCLIP(OpenVocabSegmentor):
    """Training-free MaskCLIP over a frozen :class:`~ovseg.clip.CLIPTeacher`.

    Holds no trainable parameter and nothing a checkpoint saves (the teacher keeps its
    weights out of ``state_dict``); ``train_net.py --eval-only`` runs it without weights.
    Its network inputs are the images minus the teacher's pixel mean (the teacher applies
    its own normalisation), so padding with zeros is padding with the mean.
    """

    # "sem_seg" holds probabilities (no softmax on top); an instance that upsamples logits
    # (MODEL.MASKCLIP.UPSAMPLE_LOGITS) says "logits"
    sem_seg_scores = "probabilities"
    # the official runs read pretrain/<set>_<model>_clip_text.pth (maskclip_head.py:54-56)
    reads_text_embeddings_file = True

    @configurable
    def __init__(
        self,
        *,
        teacher: CLIPTeacher,
        templates: Sequence[str],
        vocabulary: Optional[Sequence[str]] = None,
        inference_mode: str = "whole",
        slide_window: Tuple[int, int] = (448, 448),
        slide_stride: Tuple[int, int] = (224, 224),
        prompt_denoise: bool = False,
        prompt_denoise_threshold: float = 0.5,
        key_smoothing: bool = False,
        key_smoothing_threshold: float = 1.0,
        key_normalization: str = "positions",
        logit_scale: float = 100.0,
        size_divisibility: int = -1,
        prompt_names: Optional[Mapping[str, str]] = None,
        test_aug: Optional[TestTimeAug] = None,
        upsample_logits: bool = False,
        stretch_grid: bool = False,
        pad_to_stride: bool = True,
        **kwargs,
    ):
        """
        Args:
            teacher (CLIPTeacher): the frozen CLIP (ViT or ModifiedResNet vision tower).
            templates (Sequence[str]): prompt templates, each with one ``"{}"``.
            vocabulary (Sequence[str], optional): class names used for inputs that carry no
                ``"vocabulary"``; None = every input must carry one.
            inference_mode (str): "whole" or "slide".
            slide_window, slide_stride ((int, int)): sliding-window size and stride.
            prompt_denoise (bool): apply prompt denoising.
            prompt_denoise_threshold (float): its threshold (paper: 0.5).
            key_smoothing (bool): apply key smoothing.
            key_smoothing_threshold (float): its confidence threshold (official configs: 1.0).
            key_normalization (str): "positions" (official code) or "channels" (cosine).
            logit_scale (float): CLIP's logit scale for the softmax (100).
            size_divisibility (int): pad each forward's input (bottom/right, with the pixel
                mean) to a multiple of this; <= 0 = only to the teacher's stride.
            prompt_names: display name -> embedded text (:mod:`ovseg.clip.prompt_names`).
            test_aug (TestTimeAug, optional): multi-scale / flip testing (TEST.AUG).
            upsample_logits (bool): without key smoothing, "sem_seg" holds the upsampled
                logits, as the official head's cosines (else the probabilities).
            stretch_grid (bool): resize the cell grid onto the input padded to
                ``size_divisibility`` only (mmseg's ``encode_decode``), not cell-aligned.
            pad_to_stride (bool): pad each input to a multiple of the tower's stride
                (the official ViT's corner padding); False: the tower's own rounding down
                (the official ``ResNetClip`` pads nothing), which needs ``stretch_grid``.
            kwargs: :class:`OpenVocabSegmentor`'s synonym and background arguments.
        """
        d = int(size_divisibility)
        divisibility = _input_divisibility(teacher, d, bool(pad_to_stride), bool(stretch_grid))
        super().__init__(
            teacher=teacher,
            pixel_mean=teacher.pixel_mean.flatten().tolist(),
            pixel_std=[1.0, 1.0, 1.0],
            vocabulary=vocabulary,
            inference_mode=inference_mode,
            slide_window=slide_window,
            slide_stride=slide_stride,
            size_divisibility=divisibility,
            prompt_names=prompt_names,
            test_aug=test_aug,
            sem_seg_scores="logits" if upsample_logits and not key_smoothing else "probabilities",
            **kwargs,
        )
        options = self.text_options()
        self.classifier = TextClassifier(teacher, templates, logit_scale=logit_scale, **options)
        self.prompt_denoise = bool(prompt_denoise)
        self.prompt_denoise_threshold = _check_threshold(
            prompt_denoise_threshold, "prompt denoising threshold"
        )
        self.key_smoothing = bool(key_smoothing)
        self.key_smoothing_threshold = _check_threshold(
            key_smoothing_threshold, "key smoothing threshold"
        )
        self.key_normalization = _check_key_normalization(key_normalization)
        self.upsample_logits = self.sem_seg_scores == "logits"
        self.stretch_to = max(d, 1) if stretch_grid else 0  # 0: cell-aligned
        self.pad_to_stride = bool(pad_to_stride)

    @classmethod
    def from_config(cls, cfg, teacher: Optional[CLIPTeacher] = None) -> Dict:
        """Keyword arguments from ``cfg``; ``teacher``: an already-built teacher to share
        (a student's labeller), else one is built from MODEL.CLIP."""
        mc = cfg.MODEL.MASKCLIP
        args = OpenVocabSegmentor.base_config(cfg)
        args.pop("ignore_value")
        return {
            **args,
            "teacher": teacher if teacher is not None else build_clip_teacher(cfg),
            "templates": get_templates(cfg.MODEL.CLIP.TEMPLATES),
            "prompt_denoise": mc.PROMPT_DENOISE,
            "prompt_denoise_threshold": mc.PROMPT_DENOISE_THRESHOLD,
            "key_smoothing": mc.KEY_SMOOTHING,
            "key_smoothing_threshold": mc.KEY_SMOOTHING_THRESHOLD,
            "key_normalization": mc.KEY_NORMALIZATION,
            "logit_scale": cfg.MODEL.CLIP.LOGIT_SCALE,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "upsample_logits": mc.UPSAMPLE_LOGITS,
            "stretch_grid": mc.STRETCH_GRID,
            "pad_to_stride": mc.PAD_TO_STRIDE,
        }

    @property
    def templates(self) -> Tuple[str, ...]:
        return self.classifier.templates

    @property
    def logit_scale(self) -> float:
        return self.classifier.logit_scale

    def text_embeddings(self, names: Sequence[str]) -> Tensor:
        """(K, D) prompt-ensembled text embeddings of ``names`` (memoised by the teacher)."""
        return self.classifier(names)

    def predict(self, images: Tensor, text: Tensor) -> Tensor:
        """MaskCLIP's scores of a batch, at the batch's size.

        Args:
            images (Tensor): (b, 3, h, w) network inputs: RGB in [0, 255] minus the pixel
                mean (:meth:`normalize`).
            text (Tensor): (K, D) text embeddings.

        Returns:
            Tensor: (b, K, h, w) scores (see the module docstring).
        """
        h, w = images.shape[-2:]
        m = self.size_divisibility
        images = F.pad(images.float(), (0, -w % m, 0, -h % m)) + self.teacher.pixel_mean
        out = self.teacher.dense_embeddings(
            images, return_keys=self.key_smoothing, pad=self.pad_to_stride
        )
        dense, keys = out if self.key_smoothing else (out, None)
        logits = cosine_logits(dense, text, normalize_text=not self.classifier.from_file)
        scale = self.logit_scale
        pd = self.prompt_denoise_threshold if self.prompt_denoise else None
        ks = self.key_smoothing_threshold if self.key_smoothing else None
        if self.upsample_logits:  # no key smoothing here: the (denoised) logits
            if pd is not None:
                logits = prompt_denoise(logits, threshold=pd, logit_scale=scale)
            scores = logits * scale
        else:
            scores = refine_scores(logits, keys, logit_scale=scale, prompt_denoise_threshold=pd,
                                   key_smoothing_threshold=ks,
                                   key_normalization=self.key_normalization)  # fmt: skip
        if self.stretch_to:  # the grid over the input padded to INPUT.SIZE_DIVISIBILITY only
            size = (h + -h % self.stretch_to, w + -w % self.stretch_to)
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
            return scores[:, :, :h, :w]
        # cell (i, j) covers pixels [i*s, (i+1)*s): upsample over the padded canvas, then
        # crop, so no cell is stretched over pixels it does not cover
        gh, gw = scores.shape[-2:]
        s = self.teacher.stride
        scores = F.interpolate(scores, size=(gh * s, gw * s), mode="bilinear", align_corners=False)
        return scores[:, :, :h, :w]

    def losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        raise RuntimeError(
            "MaskCLIP is training-free and has nothing to train; evaluate it with "
            "`train_net.py --eval-only --config-file <maskclip config>`"
        )
