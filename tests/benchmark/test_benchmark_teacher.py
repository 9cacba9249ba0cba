"""ovseg.benchmark.teacher on tiny random CLIPs: the positional-embedding swap and the
teacher benchmark's results."""

from __future__ import annotations

import json

import pytest
import torch
from ovseg_testing import ROOT

from detectron2.config import get_cfg

from ovseg import add_ovseg_config
from ovseg.benchmark import benchmark_teacher, positional_embedding_for
from ovseg.clip import build_clip_teacher


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
        with positional_embedding_for(visual, native, teacher.stride):
            assert torch.allclose(visual(native), expected, atol=1e-6)
        # at another size the tower runs on the larger grid, and the original comes back
        big = torch.randn(2, 3, 96, 128)
        with positional_embedding_for(visual, big, teacher.stride):
            grid = (96 // teacher.stride) * (128 // teacher.stride)
            assert owner.positional_embedding.shape[0] == grid + 1
            assert visual(big).shape == (2, teacher.embed_dim)
    assert owner.positional_embedding is original


def test_teacher_benchmark_reports_ratios_and_store_rate(tmp_path):
    res = benchmark_teacher(
        model=str(ROOT / "configs" / "clip" / "tiny_vit.json"),
        size=(40, 48),
        batch=1,
        device="cpu",
        iters=1,
        warmup=0,
        clock="process",
        cache_dir=str(tmp_path / "cache"),
        store=True,
    )
    assert res["grid"] == [3, 3] and res["clock"] == "process"
    assert res["model_image_size"] == [64, 64]
    for key in (
        "ratio_dense_vs_plain_same_tokens",
        "maskclip_label_images_per_s",
        "pseudo_store_images_per_s",
    ):
        assert res[key] > 0, key
    assert json.loads(json.dumps(res))["vocabulary_size"] == 20


def test_process_clock_is_refused_on_cuda():
    from ovseg.benchmark import time_calls

    with pytest.raises(ValueError, match="use --clock wall on CUDA"):
        time_calls({}, torch.device("cuda"), iters=1, warmup=0, clock="process")
    with pytest.raises(ValueError, match="clock 'cpu' is not one of"):
        time_calls({}, torch.device("cpu"), iters=1, warmup=0, clock="cpu")


def test_a_time_limit_gives_a_slow_function_fewer_timed_calls_not_fewer_than_three():
    # the suite's LSeg ViT-L/16 inference row (multi-scale slide) overran its budget on the
    # H200 and was lost; a time limit cuts the timed calls instead
    import time as clock

    from ovseg.benchmark import time_calls

    calls = {"slow": 0, "quick": 0}

    def slow():
        calls["slow"] += 1
        clock.sleep(0.02)

    def quick():
        calls["quick"] += 1

    timed = {}
    cpu = torch.device("cpu")
    out = time_calls({"slow": slow}, cpu, iters=50, warmup=1, time_limit_s=0.1, timed=timed)
    assert 3 <= timed["slow"] < 50 and calls["slow"] == 1 + timed["slow"]
    assert out["slow"] >= 0.02
    timed, calls["slow"] = {}, 0
    time_calls({"slow": slow}, cpu, iters=50, warmup=5, time_limit_s=0.0, timed=timed)
    assert timed == {"slow": 3}  # never below three
    assert calls["slow"] == 1 + 3  # the warm-up: one call, the limit already spent
    timed = {}
    time_calls({"quick": quick}, cpu, iters=20, warmup=0, time_limit_s=5.0, timed=timed)
    assert timed == {"quick": 20}  # within the limit: every call
