"""Helpers shared by the tests: small datasets in real on-disk layouts, subprocess set-up.

Import as ``from ovseg_testing import ...`` (tests/ is on pytest's ``pythonpath``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_ade20k_fixture(root: Path, n_train: int = 4, n_val: int = 2, size: int = 64) -> Path:
    """ADEChallengeData2016 after ``datasets/prepare_ade20k_sem_seg.py``: JPEG images and
    label PNGs with contiguous ids 0-149 and 255 = ignore. Each image is two flat colour
    regions whose classes are learnable from colour alone."""
    rng = np.random.default_rng(0)
    base = root / "ADEChallengeData2016"
    for split, n in (("training", n_train), ("validation", n_val)):
        img_dir = base / "images" / split
        gt_dir = base / "annotations_detectron2" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cut = int(rng.integers(size // 4, 3 * size // 4))
            label = np.full((size, size), 2, np.uint8)
            label[:, cut:] = 7
            label[:2, :2] = 255
            image = np.zeros((size, size, 3), np.uint8)
            image[label == 2] = (200, 40, 40)
            image[label == 7] = (40, 40, 200)
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{i:08d}"
            Image.fromarray(image).save(img_dir / f"{stem}.jpg", quality=95)
            Image.fromarray(label).save(gt_dir / f"{stem}.png")
    return root


def subprocess_env(datasets_root: Path | None = None) -> dict[str, str]:
    """Environment for running repo scripts in a subprocess (CPU only, quiet, 1 thread)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["OMP_NUM_THREADS"] = "1"
    if datasets_root is not None:
        env["DETECTRON2_DATASETS"] = str(datasets_root)
    return env


# ---- tiny batches for dense open-vocabulary models (LSeg, ZegCLIP tests)
def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def two_region_batch(names=("red thing", "blue thing", "green thing"), n: int = 2, size: int = 32):
    """Training inputs whose label is a function of colour: left red = 0, right blue = 1,
    a green square = 2, and an ignored corner."""
    inputs = []
    for i in range(n):
        cut = size // 3 + i * 3
        img = torch.zeros(3, size, size, dtype=torch.uint8)
        label = torch.zeros(size, size, dtype=torch.long)
        img[0, :, :cut] = 220
        img[2, :, cut:] = 220
        label[:, cut:] = 1
        img[:, 4:12, 20:28] = torch.tensor([30, 200, 30], dtype=torch.uint8)[:, None, None]
        label[4:12, 20:28] = 2
        label[:3, :3] = 255
        inputs.append({"image": img, "sem_seg": label, "vocabulary": list(names)})
    return inputs
