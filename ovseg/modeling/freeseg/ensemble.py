# Follows the official FreeSeg test-time CLIP ensemble: MaskFormerClipAdapter._preprocess_image
# (mask2former/modeling/clip_adapter/adapter.py:144-184), crop_with_mask (clip.py:112-172) and
# semantic_inference (open_vocabulary_model.py:412-453), re-written.
"""FreeSeg's second stage at test: classify each query's mask crop with the frozen CLIP and
ensemble with the query's own classification.

- Crops: the mask (probability > ``threshold``) is cut to its bounding box, pixels outside
  the mask take the CLIP pixel mean, the crop is resized (bicubic, corners aligned) to CLIP's
  input size (224 for ViT-B/16) and embedded by the frozen image tower.
- p_clip = softmax over the C classes of ``temperature * cos(crop, text)`` (the no-object
  column dropped before the softmax); a query whose mask is empty gets p_clip = 1.
- p_q = softmax over the C + 1 query logits, no-object dropped after (not renormalised).
- Seen classes: p = p_q^lambda * p_clip^(1 - lambda); unseen: p = p_q^(1 - lambda) *
  p_clip^lambda (official lambda 0.8; VOC 0.7/0.8, cross-dataset 0.4).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...clip import CLIPTeacher

__all__ = ["check_expand_ratio", "clip_region_probs", "ensemble_probs", "mask_crops", "query_probs"]


def _expand_box(
    x0: int, y0: int, x1: int, y1: int, ratio: float, shape: Tuple[int, int]
) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1) scaled by ``ratio`` about its centre, each truncated to an int as
    the official ``expand_box`` does, then clipped to the (H, W) image."""
    cx, cy, w, h = 0.5 * (x0 + x1), 0.5 * (y0 + y1), (x1 - x0) * ratio, (y1 - y0) * ratio
    box = [int(v) for v in (cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h)]
    return max(box[0], 0), max(box[1], 0), min(box[2], shape[1]), min(box[3], shape[0])


def check_expand_ratio(expand_ratio: float) -> float:
    """``expand_ratio`` as a float if it is >= 1 (the box grows about its centre; a smaller
    box could lose a small mask whole), else a ValueError naming the config key."""
    if not expand_ratio >= 1:
        raise ValueError(
            f"MODEL.FREESEG.MASK_EXPAND_RATIO must be >= 1 (the mask's box grows about its "
            f"centre; 1.0 is the official value), got {expand_ratio}"
        )
    return float(expand_ratio)


def mask_crops(
    image: Tensor,
    masks: Tensor,
    fill: Tensor,
    size: Tuple[int, int],
    threshold: float = 0.5,
    expand_ratio: float = 1.0,
) -> Tuple[Tensor, Tensor]:
    """Box crops of an image around each mask, outside the mask filled, resized.

    Args:
        image (Tensor): (3, H, W) RGB in [0, 255].
        masks (Tensor): (Q, H, W) mask probabilities (or booleans).
        fill (Tensor): (3,) the value of pixels outside a mask (the CLIP mean, 0-255 scale).
        size ((int, int)): output (h, w) of every crop.
        threshold (float): a pixel is inside a mask where its value is > ``threshold``.
        expand_ratio (float): the box's width and height are scaled by this about its centre,
            truncated to whole pixels and clipped to the image (``clip.py:112-172``); the
            added pixels are outside the mask, so they take ``fill``: the object shrinks
            within the crop (official MASK_EXPAND_RATIO 1.0).

    Returns:
        (Tensor, Tensor): crops (N, 3, h, w) of the N non-empty masks in order, and valid
        (Q,) bool, which masks are non-empty.
    """
    if image.dim() != 3 or masks.dim() != 3 or image.shape[-2:] != masks.shape[-2:]:
        raise ValueError(
            f"image {tuple(image.shape)} and masks {tuple(masks.shape)} must be (3, H, W) and "
            "(Q, H, W) of one size"
        )
    check_expand_ratio(expand_ratio)
    inside = masks > threshold
    valid = inside.flatten(1).any(dim=1)
    fill = fill.to(device=image.device, dtype=torch.float32).view(3, 1, 1)
    crops = []
    for mask in inside[valid]:
        rows = torch.nonzero(mask.any(dim=1)).flatten()
        cols = torch.nonzero(mask.any(dim=0)).flatten()
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        if expand_ratio != 1:
            x0, y0, x1, y1 = _expand_box(x0, y0, x1, y1, expand_ratio, mask.shape)
        region = image[:, y0:y1, x0:x1].float()
        crop = torch.where(mask[y0:y1, x0:x1], region, fill)
        crops.append(
            F.interpolate(crop[None], size=tuple(size), mode="bicubic", align_corners=True)[0]
        )
    if not crops:
        return image.new_zeros((0, 3, *size), dtype=torch.float32), valid
    return torch.stack(crops), valid


def clip_region_probs(
    teacher: CLIPTeacher,
    image: Tensor,
    masks: Tensor,
    text: Tensor,
    *,
    threshold: float = 0.5,
    temperature: float = 100.0,
    batch_size: int = 64,
    expand_ratio: float = 1.0,
) -> Tensor:
    """CLIP's class distribution of every query's mask crop; 1 for empty masks.

    Args:
        teacher (CLIPTeacher): the frozen CLIP (its image tower and pixel mean).
        image (Tensor): (3, H, W) RGB in [0, 255].
        masks (Tensor): (Q, H, W) mask probabilities (sigmoid of the mask logits).
        text (Tensor): (C, D) L2-normalised class texts (no no-object row).
        threshold (float): mask binarisation threshold (official MASK_THR 0.5).
        temperature (float): CLIP's logit scale (official 100).
        batch_size (int): crops per image-tower forward.
        expand_ratio (float): the crop box's scale (:func:`mask_crops`).

    Returns:
        Tensor: (Q, C) p_clip (float32 at least), rows summing to 1 except empty masks'
            rows of ones.
    """
    fill = teacher.pixel_mean.flatten()
    crops, valid = mask_crops(
        image, masks, fill, teacher.image_size, threshold, expand_ratio=expand_ratio
    )
    # float32 at least: a bf16 text (the prompted tower under autocast) must not round them
    dtype = torch.promote_types(text.dtype, torch.float32)
    probs = text.new_ones(masks.shape[0], text.shape[0], dtype=dtype)
    if crops.shape[0]:
        emb = torch.cat(
            [
                teacher.encode_image(crops[i : i + batch_size])
                for i in range(0, len(crops), batch_size)
            ]
        )
        # float32 under autocast (or a bf16 tower) too: cosines times 100 in bf16 move by 0.5
        with torch.autocast(emb.device.type, enabled=False):
            logits = temperature * emb.float() @ text.float().t()
        probs[valid.to(probs.device)] = logits.softmax(dim=-1).to(probs.dtype)
    return probs


def query_probs(logits: Tensor) -> Tensor:
    """(..., C + 1) query logits -> (..., C): softmax with no-object, then dropped (float32
    whatever the logits' dtype)."""
    return logits.float().softmax(dim=-1)[..., :-1]


def ensemble_probs(
    p_query: Tensor, p_clip: Tensor, seen: Optional[Tensor], weight: float = 0.8
) -> Tensor:
    """The geometric ensemble of query and CLIP class probabilities.

    Args:
        p_query (Tensor): (Q, C) from :func:`query_probs`.
        p_clip (Tensor): (Q, C) from :func:`clip_region_probs`.
        seen (Tensor, optional): (C,) bool, the classes trained on; None = all unseen (the
            official default without a ``trainable_flag``, ``open_vocabulary_model.py:431-436``).
        weight (float): lambda in (0, 1].

    Returns:
        Tensor: (Q, C); seen p_q^w * p_clip^(1-w), unseen p_q^(1-w) * p_clip^w.
    """
    if not 0 < weight <= 1:
        raise ValueError(
            f"the ensemble weight must be in (0, 1], got {weight} (MODEL.FREESEG.ENSEMBLE_WEIGHT)"
        )
    if p_query.shape != p_clip.shape:
        raise ValueError(f"p_query {tuple(p_query.shape)} and p_clip {tuple(p_clip.shape)} differ")
    as_seen = p_query.pow(weight) * p_clip.pow(1 - weight)
    as_unseen = p_query.pow(1 - weight) * p_clip.pow(weight)
    if seen is None:
        return as_unseen
    if seen.shape != p_query.shape[-1:]:
        raise ValueError(f"seen has shape {tuple(seen.shape)}, expected ({p_query.shape[-1]},)")
    return torch.where(seen.to(p_query.device).bool(), as_seen, as_unseen)
