"""Golden-output regression of the teacher on seeded random-init tiny models.

Small slices of every output are stored in ``tests/clip/golden/<model>.json`` so a refactor
cannot silently change numerics. After an intended change, regenerate with
``OVSEG_REGEN_GOLDEN=1 python -m pytest tests/clip/test_golden.py`` and review the diff
(ovseg_testing.golden).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ovseg_testing import TINY_RN, TINY_VIT, Tol, assert_golden, random_image_batch, tiny_clip_cfg

from ovseg.clip import build_clip_teacher

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
TEMPLATES = ("a photo of a {}.", "a sketch of the {}.")


def _outputs(config: Path) -> dict:
    torch.manual_seed(0)
    teacher = build_clip_teacher(tiny_clip_cfg(str(config)))
    state = teacher.model.state_dict()
    # odd size: exercises padding, and for the ViT positional-embedding interpolation
    dense, keys = teacher.dense_embeddings(random_image_batch(1, 75, 90, seed=2), return_keys=True)
    images = random_image_batch(2, 64, 64, seed=1)
    mask = torch.zeros(1, 64, 64)
    mask[0, 8:40, 16:60] = 1.0
    masks = [mask, torch.ones(1, 64, 64)]
    return {
        "param_sum": sum(v.double().sum().item() for v in state.values()),
        "param_abs_sum": sum(v.double().abs().sum().item() for v in state.values()),
        "text": teacher.encode_text(["cat", "traffic light"], TEMPLATES)[:, :8].tolist(),
        "image": teacher.encode_image(images)[:, :8].tolist(),
        "dense_first": dense[0, :8, 0, 0].tolist(),
        "dense_last": dense[0, :8, -1, -1].tolist(),
        "dense_shape": list(dense.shape),
        "keys_first": keys[0, :8, 0, 0].tolist(),
        "region_pool": [r[0, :8].tolist() for r in teacher.region_embeddings(images, masks)],
        "region_crop": [
            r[0, :8].tolist() for r in teacher.region_embeddings(images, masks, mode="crop")
        ],
    }


@pytest.mark.parametrize("config", [TINY_VIT, TINY_RN], ids=lambda p: p.stem)
def test_golden_outputs(config):
    outputs = _outputs(config)
    slices = [key for key in outputs if not key.startswith("param") and key != "dense_shape"]
    assert_golden(
        GOLDEN_DIR / f"{config.stem}.json",
        outputs,
        init=("param_sum", "param_abs_sum"),
        exact=("dense_shape",),
        tolerances=dict.fromkeys(slices, Tol(atol=1e-4)),
    )
