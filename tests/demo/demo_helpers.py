"""Shared set-up of the demo tests: the demo modules, a tiny-CLIP MaskCLIP config, images."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
from ovseg_testing import ROOT
from PIL import Image

DEMO_DIR = ROOT / "demo"
# the shipped MaskCLIP config, shrunk to a tiny random CLIP on 64-pixel inputs
CONFIG = str(ROOT / "configs" / "voc" / "maskclip" / "maskclip_vitb16_bs1.yaml")
TINY_VIT = str(ROOT / "configs" / "clip" / "tiny_vit.json")


def tiny_opts(cache_dir: Path) -> list[str]:
    return [
        "MODEL.DEVICE", "cpu",
        "MODEL.CLIP.MODEL_NAME", TINY_VIT,
        "MODEL.CLIP.PRETRAINED", "",
        "MODEL.CLIP.TEMPLATES", "single",
        "MODEL.CLIP.CACHE_DIR", str(cache_dir),
        "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64",
    ]  # fmt: skip


def load_demo_modules():
    """(predictor, demo) modules, imported the way ``python demo/demo.py`` imports them."""
    if str(DEMO_DIR) not in sys.path:
        sys.path.insert(0, str(DEMO_DIR))
    import predictor  # noqa: PLC0415  (found through DEMO_DIR)

    spec = importlib.util.spec_from_file_location("ovseg_demo_cli", DEMO_DIR / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo
    spec.loader.exec_module(demo)
    return predictor, demo


def write_image(path: Path, height: int = 48, width: int = 64) -> Path:
    """A two-region RGB PNG (red left, green right)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (200, 40, 40)
    image[:, width // 2 :] = (40, 160, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
