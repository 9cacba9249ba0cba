"""Golden-output regression of the teacher on seeded random-init tiny models.

Small slices of every output are stored in ``tests/clip/golden/<model>.json`` so a refactor
cannot silently change numerics. After an intended change, regenerate with
``OVSEG_REGEN_GOLDEN=1 python -m pytest tests/clip/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from teacher_utils import TINY_RN, TINY_VIT, random_images, tiny_cfg

from ovseg.clip import build_clip_teacher

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
TOLERANCE = 1e-4
TEMPLATES = ("a photo of a {}.", "a sketch of the {}.")


def _outputs(config: Path) -> dict:
    torch.manual_seed(0)
    teacher = build_clip_teacher(tiny_cfg(str(config)))
    state = teacher.model.state_dict()
    # odd size: exercises padding, and for the ViT positional-embedding interpolation
    dense, keys = teacher.dense_embeddings(random_images(1, 75, 90, seed=2), return_keys=True)
    images = random_images(2, 64, 64, seed=1)
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
    path = GOLDEN_DIR / f"{config.stem}.json"
    outputs = _outputs(config)
    if os.environ.get("OVSEG_REGEN_GOLDEN") == "1":
        GOLDEN_DIR.mkdir(exist_ok=True)
        lines = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in outputs.items()]
        path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
        pytest.skip(f"regenerated {path}")
    assert path.is_file(), f"{path} missing; create it with OVSEG_REGEN_GOLDEN=1"
    golden = json.loads(path.read_text())
    for key in ("param_sum", "param_abs_sum"):
        assert outputs[key] == pytest.approx(golden[key], rel=1e-6), (
            f"{key}: the seeded random initialisation changed (open_clip or torch version?), "
            "so the other golden values cannot be compared"
        )
    assert outputs["dense_shape"] == golden["dense_shape"]
    for key in golden:
        if key.startswith("param") or key == "dense_shape":
            continue
        got, want = torch.tensor(outputs[key]), torch.tensor(golden[key])
        assert got.shape == want.shape, key
        assert torch.allclose(
            got, want, atol=TOLERANCE, rtol=0
        ), f"{key}: max abs diff {(got - want).abs().max():.2e}"
