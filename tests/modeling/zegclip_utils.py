"""Helpers for the ZegCLIP tests: tiny configs and models on the random-init tiny CLIP ViT."""

from __future__ import annotations

from pathlib import Path

import torch
from ovseg_testing import ROOT

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from ovseg import add_ovseg_config

TINY_VIT = str(ROOT / "configs" / "clip" / "tiny_vit.json")


def tiny_zegclip_cfg(cache_dir: Path, **zegclip):
    """A ZegCLIP config on the tiny CLIP ViT (random weights, D=32, 3 blocks, patch 16), CPU,
    without dropout (so training steps are deterministic) and without datasets."""
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "ZegCLIP"
    cfg.MODEL.BACKBONE.NAME = "build_clip_vit_prompted_backbone"
    cfg.MODEL.CLIP.MODEL_NAME = TINY_VIT
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.CLIP.CACHE_DIR = str(cache_dir)
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.MODEL.ZEGCLIP.NUM_PROMPTS = 3
    cfg.MODEL.ZEGCLIP.DECODER_HEADS = 4
    cfg.MODEL.ZEGCLIP.PROMPT_DROPOUT = 0.0
    cfg.MODEL.ZEGCLIP.DECODER_DROPOUT = 0.0
    for key, value in zegclip.items():
        node, name = _SHARED.get(key, (cfg.MODEL.ZEGCLIP, key.upper()))
        if isinstance(node, str):  # a shared key: MODEL.OVSEG...
            node = cfg
            for part in _SHARED[key][0].split("."):
                node = node[part]
        setattr(node, name, value)
    return cfg


# keyword -> (config node, key) of the keys ZegCLIP shares with the other students
_SHARED = {
    "bg_embed": ("MODEL.OVSEG", "BG_EMBED"),
    "background_class": ("MODEL.OVSEG", "BACKGROUND_CLASS"),
    "self_training_start_iter": ("MODEL.OVSEG.SELF_TRAINING", "START_ITER"),
}


def tiny_zegclip(cache_dir: Path, seed: int = 0, **zegclip):
    torch.manual_seed(seed)
    return build_model(tiny_zegclip_cfg(cache_dir, **zegclip))
