"""Zero-shot metrics of a CLIP teacher on the toy world's validation images (the offline
world's CLIP, pretrained by ``tools/pretrain_toy_clip.py``; ``make demo`` reports them)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets.toy_world import SHAPES, generate_sample
from .teacher import CLIPTeacher

__all__ = ["ZERO_SHOT_TEMPLATES", "evaluate_toy_clip", "to_tensor"]

ZERO_SHOT_TEMPLATES = ("a photo of a {}.",)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 255], detectron2's convention."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def _dense_object_accuracy(teacher: CLIPTeacher, x: torch.Tensor, labels, text) -> float:
    """MaskCLIP dense embeddings vs the shape prompts, scores upsampled bilinearly, argmax
    over the shapes, accuracy on object pixels (label 0 is background)."""
    correct = total = 0
    for i in range(0, len(x), 64):
        dense = teacher.dense_embeddings(x[i : i + 64])
        logits = torch.einsum("bdhw,kd->bkhw", dense, text)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        pred, lab = logits.argmax(dim=1) + 1, labels[i : i + 64]
        correct += int(((pred == lab) & (lab > 0)).sum())
        total += int((lab > 0).sum())
    return 100 * correct / max(total, 1)


def evaluate_toy_clip(
    teacher: CLIPTeacher, *, seed: int, num_images: int, size: int = 64
) -> Dict[str, Any]:
    """Zero-shot metrics of a CLIP teacher on the toy world's validation images.

    - ``zero_shot_accuracy``: top-1 over the 8 shape prompts ("a photo of a {}.") on the
      images holding exactly one object.
    - ``multi_label_accuracy``: over all images, |top-k shapes ∩ true shapes| / k with k the
      number of distinct shapes in the image.
    - ``retrieval_r1``: image -> caption (first caption of every image) top-1, a hit when the
      retrieved caption's text equals the image's own.
    - ``dense_object_accuracy``: MaskCLIP dense embeddings vs the shape prompts, scores
      upsampled bilinearly, argmax over the 8 shapes on object pixels; chance is 1/8.

    Args:
        teacher (CLIPTeacher): the CLIP to evaluate (through the code path every method uses).
        seed (int): the world's seed.
        num_images (int): the first validation images to evaluate on.
        size (int): image side in pixels.

    Returns:
        dict: the metrics above in percent, plus ``dense_chance``, ``num_images`` and
        ``num_single``.
    """
    images, labels, captions, shape_sets, counts = [], [], [], [], []
    for i in range(num_images):
        image, label, caps, scene = generate_sample(seed, "validation", i, size)
        images.append(image)
        labels.append(label)
        captions.append(caps[0])
        shape_sets.append({SHAPES.index(o.shape) for o in scene.objects})
        counts.append(len(scene.objects))
    x = to_tensor(np.stack(images))
    labels_t = torch.from_numpy(np.stack(labels)).long()
    text = teacher.encode_text(SHAPES, ZERO_SHOT_TEMPLATES)
    img = torch.cat([teacher.encode_image(x[i : i + 128]) for i in range(0, len(x), 128)])
    scores = img @ text.t()
    single = [i for i, n in enumerate(counts) if n == 1]
    top1 = scores.argmax(dim=1)
    zs = float(np.mean([int(top1[i]) in shape_sets[i] for i in single])) if single else 0.0
    multi = []
    for i, truth in enumerate(shape_sets):
        pred = set(scores[i].topk(len(truth)).indices.tolist())
        multi.append(len(pred & truth) / len(truth))
    distinct = list(dict.fromkeys(captions))  # images may share a caption: one text each
    cap_emb = teacher.encode_text(distinct, ("{}",))
    best = (img @ cap_emb.t()).argmax(dim=1).tolist()
    r1 = float(np.mean([distinct[b] == captions[i] for i, b in enumerate(best)]))
    return {
        "zero_shot_accuracy": 100 * zs,
        "multi_label_accuracy": 100 * float(np.mean(multi)),
        "retrieval_r1": 100 * r1,
        "dense_object_accuracy": _dense_object_accuracy(teacher, x, labels_t, text),
        "dense_chance": 100 / len(SHAPES),
        "num_images": num_images,
        "num_single": len(single),
    }
