"""Where things are: the repository root and the tiny random-init CLIP configs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# tiny open_clip model configs for random-init tests: a ViT (D=32, 3 blocks, patch 16) and a
# ModifiedResNet (D=48)
TINY_VIT = CONFIGS / "clip" / "tiny_vit.json"
TINY_RN = CONFIGS / "clip" / "tiny_rn.json"
