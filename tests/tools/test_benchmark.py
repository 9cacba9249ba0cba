"""tools/benchmark.py: the teacher subcommand on tiny random CLIPs."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from ovseg_testing import ROOT

from detectron2.config import get_cfg

from ovseg import add_ovseg_config
from ovseg.clip import build_clip_teacher


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "ovseg_benchmark", ROOT / "tools" / "benchmark.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_tool()


@pytest.mark.parametrize("config", ["tiny_vit.json", "tiny_rn.json"])
def test_tower_forward_with_resized_positional_embedding(config, tmp_path):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLIP.MODEL_NAME = str(ROOT / "configs" / "clip" / config)
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.CLIP.CACHE_DIR = str(tmp_path)
    teacher = build_clip_teacher(cfg)
    visual = teacher.model.visual
    owner = visual.attnpool if hasattr(visual, "attnpool") else visual
    original = owner.positional_embedding
    native = torch.randn(1, 3, *teacher.image_size)
    with torch.no_grad():
        expected = visual(native)
        # at the tower's own size the swap is the identity
        with bench.positional_embedding_for(visual, native, teacher.stride):
            assert torch.allclose(visual(native), expected, atol=1e-6)
        # at another size the tower runs on the larger grid, and the original comes back
        big = torch.randn(2, 3, 96, 128)
        with bench.positional_embedding_for(visual, big, teacher.stride):
            grid = (96 // teacher.stride) * (128 // teacher.stride)
            assert owner.positional_embedding.shape[0] == grid + 1
            assert visual(big).shape == (2, teacher.embed_dim)
    assert owner.positional_embedding is original


def test_teacher_subcommand_reports_ratios(tmp_path):
    out = tmp_path / "bench.json"
    res = bench.main(
        [
            "--json",
            str(out),
            "teacher",
            "--size",
            "40",
            "48",
            "--batch",
            "1",
            "--device",
            "cpu",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--clock",
            "process",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert res["grid"] == [3, 3] and res["clock"] == "process"
    for key in ("ratio_dense_vs_plain_same_tokens", "maskclip_label_images_per_s"):
        assert res[key] > 0
    assert json.loads(out.read_text())["vocabulary_size"] == 20
