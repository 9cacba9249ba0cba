"""Helpers for the checkpoint-conversion tests: the paper configs shrunk to the tiny random
CLIPs, random official weights, official checkpoint files."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from ovseg_testing import ROOT
from torch import nn

from ovseg.convert.command import build_target
from ovseg.engine.defaults import load_config

TINY_VIT = ROOT / "configs" / "clip" / "tiny_vit.json"
TINY_RN = ROOT / "configs" / "clip" / "tiny_rn.json"
ZEGCLIP_CONFIG = ROOT / "configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml"
MASKCLIP_PLUS_CONFIG = (
    ROOT / "configs/voc/maskclip_plus/maskclip_plus_rn50_r101_deeplabv2_transductive_20k_bs16.yaml"
)


def clip_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def tiny_opts(clip: Path, cache_dir: Path) -> list[str]:
    """KEY VALUE overrides putting a config on a tiny random CLIP, on CPU."""
    return [
        "MODEL.DEVICE", "cpu",
        "MODEL.CLIP.MODEL_NAME", str(clip),
        "MODEL.CLIP.PRETRAINED", "",
        "MODEL.CLIP.CACHE_DIR", str(cache_dir),
    ]  # fmt: skip


def build(config: Path, opts: list[str], seed: int = 0):
    """The config and the model ``tools/convert_checkpoint.py --config-file`` builds."""
    cfg = load_config(str(config), opts)
    torch.manual_seed(seed)
    return cfg, build_target(cfg)


@torch.no_grad()
def randomise(module: nn.Module, seed: int, gain: float = 1.0) -> None:
    """Random values everywhere, so that no mix-up hides behind an initialisation (norm
    weights near 1, variances positive); matrices have ``gain`` / sqrt(fan-in) deviation."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in list(module.named_parameters()) + list(module.named_buffers()):
        if not p.is_floating_point():
            p.fill_(7)
            continue
        noise = torch.randn(p.shape, generator=gen)
        if name.endswith("running_var"):
            p.copy_(0.5 + noise.abs())
        elif p.dim() == 1 and name.endswith("weight"):
            p.copy_(1 + 0.1 * noise)
        elif p.dim() >= 2:
            p.copy_(noise * gain / max(p[0].numel(), 1) ** 0.5)
        else:
            p.copy_(0.1 * noise)


def resize_pos(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """A ViT's positional embedding resized as the official ZegCLIP ``init_weights`` does."""
    old = int(round((pos.shape[0] - 1) ** 0.5))
    if old == grid:
        return pos.clone()
    spatial = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, size=(grid, grid), mode="bilinear")
    return torch.cat([pos[:1], spatial.reshape(pos.shape[1], grid * grid).t()], dim=0)


def save_official(path: Path, state: dict) -> Path:
    """An mmcv-style checkpoint file: meta and state_dict."""
    meta = {"mmcv_version": "1.3.0", "CLASSES": ["a", "b"], "iter": 20000, "seed": 0}
    torch.save({"meta": meta, "state_dict": dict(state)}, path)
    return path
