"""Small fixtures for the pseudo-label tests: a store, images on disk, a fake teacher."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn

from detectron2.data import transforms as T

from ovseg.data.dataset_mappers import SemanticDatasetMapper
from ovseg.pseudo import PseudoLabelStore

NAMES5 = ["cat", "dog", "grass", "sky", "road"]


def make_store(root: Path, names=NAMES5, threshold: float = 0.0, **extra) -> PseudoLabelStore:
    manifest = {
        "fingerprint": "f" * 64,
        "teacher": {"clip": "c" * 64, "settings": {"method": "Fake", "templates": "single"}},
        "vocabulary": list(names),
        "unseen": [],
        "threshold": threshold,
        "dataset": "fake_train",
        **extra,
    }
    return PseudoLabelStore.create(str(root), manifest)


def write_images(folder: Path, n: int = 6, size=(12, 17)) -> List[dict]:
    """``n`` random RGB PNGs (H, W = size) and their dataset dicts, in shuffled order."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    dicts = []
    for i in range(n):
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        dicts.append({"file_name": str(path), "image_id": f"img_{i:03d}"})
    return [dicts[i] for i in rng.permutation(n)]


def eval_mapper(names=NAMES5) -> SemanticDatasetMapper:
    """The real mapper in test mode without resizing: outputs keep the image size."""
    return SemanticDatasetMapper(
        is_train=False,
        augmentations=[],
        image_format="RGB",
        ignore_label=255,
        size_divisibility=-1,
        vocabulary=names,
    )


class FakeTeacher(nn.Module):
    """Logits = a fixed linear map of each pixel's colour; records which images it saw.

    Args:
        num_classes (int): K.
        fail_after (int, optional): raise after this many images (a killed run).
        scale (float): multiplies the logits (large: confident, small: unsure).
    """

    def __init__(self, num_classes: int = 5, fail_after: Optional[int] = None, scale=0.05):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(num_classes, 3, generator=g) * scale)
        self.fail_after = fail_after
        self.seen: List[str] = []

    def forward(self, batched_inputs):
        if self.training:
            raise RuntimeError("FakeTeacher must run in eval mode")
        out = []
        for inp in batched_inputs:
            if self.fail_after is not None and len(self.seen) >= self.fail_after:
                raise KeyboardInterrupt("simulated kill")
            self.seen.append(inp["file_name"])
            image = inp["image"].float() - 128.0
            scores = torch.einsum("kc,chw->khw", self.weight, image)
            assert scores.shape[-2:] == (inp["height"], inp["width"])
            out.append({"sem_seg": scores})
        return out


def position_pattern(h: int, w: int, modulo: int) -> np.ndarray:
    """A label where nearly every pixel differs from its neighbours: alignment shows."""
    y, x = np.mgrid[:h, :w]
    return ((7 * y + 3 * x + (x * y) % 5) % modulo).astype(np.int64)


def train_mapper(names, crop=(20, 24), ignore_label=255) -> SemanticDatasetMapper:
    """The real training mapper with a resize, a random crop, a certain flip and padding."""
    return SemanticDatasetMapper(
        is_train=True,
        augmentations=[
            T.ResizeShortestEdge((40,), max_size=1000, sample_style="choice"),
            T.RandomCrop("absolute", crop),
            T.RandomFlip(prob=1.0, horizontal=True),
        ],
        image_format="RGB",
        ignore_label=ignore_label,
        size_divisibility=32,
        vocabulary=names,
    )
