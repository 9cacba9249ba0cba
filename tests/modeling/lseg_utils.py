"""Helpers for the LSeg tests: tiny configs and models on the random-init tiny CLIP ViT."""

from __future__ import annotations

from pathlib import Path

import torch
from ovseg_testing import ROOT

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from ovseg import add_ovseg_config

TINY_VIT = str(ROOT / "configs" / "clip" / "tiny_vit.json")


def tiny_lseg_cfg(cache_dir: Path, **lseg):
    """An LSeg config on the tiny CLIP ViT (random weights), CPU, small decoder."""
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "LSeg"
    cfg.MODEL.BACKBONE.NAME = "build_clip_vit_backbone"
    cfg.MODEL.CLIP.MODEL_NAME = TINY_VIT
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.CLIP.CACHE_DIR = str(cache_dir)
    cfg.MODEL.CLIP.TEMPLATES = "name"  # the paper's text: the bare class name
    cfg.MODEL.DPT.FEATURES = 16
    cfg.MODEL.DPT.REASSEMBLE_CHANNELS = [8, 8, 16, 16]
    for key, value in lseg.items():
        # the temperature belongs to the shared text classifier (MODEL.OVSEG)
        node = cfg.MODEL.OVSEG if "logit_scale" in key else cfg.MODEL.LSEG
        setattr(node, key.upper(), value)
    return cfg


def tiny_lseg(cache_dir: Path, seed: int = 0, **lseg):
    torch.manual_seed(seed)
    return build_model(tiny_lseg_cfg(cache_dir, **lseg))
