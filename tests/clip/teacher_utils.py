"""Helpers for the teacher tests: tiny random-init CLIP models from configs/clip/*.json."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from ovseg.clip.build import register_model_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "clip"
TINY_VIT = CONFIG_DIR / "tiny_vit.json"
TINY_RN = CONFIG_DIR / "tiny_rn.json"


def make_model(config: Path, seed: int = 0, **kwargs):
    """Seeded random-init open_clip model, its tokenizer and its registered name."""
    name = register_model_config(str(config))
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None, **kwargs)
    return model, open_clip.get_tokenizer(name), name


def random_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(b, 3, h, w) float images in [0, 255]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 255


def tiny_cfg(model_name: str, pretrained: str = "", cache_dir: str = ""):
    """A detectron2 config with ovseg's keys, on CPU, for build_clip_teacher."""
    from detectron2.config import get_cfg

    from ovseg import add_ovseg_config

    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLIP.MODEL_NAME = model_name
    cfg.MODEL.CLIP.PRETRAINED = pretrained
    cfg.MODEL.CLIP.CACHE_DIR = cache_dir
    return cfg
