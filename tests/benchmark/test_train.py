"""ovseg.benchmark.train: training throughput of any config. ZegCLIP on synthetic data with
its FLOP count checked against a count by hand; LSeg and MaskCLIP+ (the teacher in the loop)
on a toy world through their training loaders; the errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ovseg_testing import ROOT

from ovseg.benchmark import benchmark_training, training_config

VOC = str(ROOT / "configs" / "voc" / "zegclip" / "zegclip_vitb16_inductive_20k_bs16.yaml")
MASKCLIP = str(ROOT / "configs" / "voc" / "maskclip" / "maskclip_vitb16_bs1.yaml")
LSEG_TOY = str(ROOT / "configs" / "toy" / "lseg_toyrn_400_bs8.yaml")
MASKCLIP_PLUS_TOY = str(
    ROOT / "configs" / "toy" / "maskclip_plus_toyrn_r18_transductive_300+300_bs16.yaml"
)
TINY = ["MODEL.CLIP.MODEL_NAME", str(ROOT / "configs" / "clip" / "tiny_vit.json")]
KEYS = {
    "meta_architecture", "data", "device", "precision", "batch", "size", "input_shape", "iters",
    "it_per_s", "images_per_s", "s_per_iter", "data_s_per_iter", "data_share",
    "peak_memory_gib", "peak_memory_kind", "peak_reserved_gib", "flops_forward", "flops_backward",
    "flops_per_iter",
    "flops_convention", "tflops_achieved", "peak_tflops", "mfu", "learnable_params",
    "total_params", "torch", "loss_first", "loss_last",
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _zegclip(size=64, precision="fp32", iters=2, warmup=1, peak_tflops=None):
    cfg = training_config(VOC, TINY, device="cpu", batch=2, size=size, precision=precision)
    return benchmark_training(
        cfg, iters=iters, warmup=warmup, data="synthetic", peak_tflops=peak_tflops
    )


@pytest.fixture(scope="module")
def fp32_run():
    return _zegclip()


def _tiny_flops(size, batch=2, patch=16, width=64, blocks=3, prompts=10, dim=32, classes=15):
    """(forward, backward) matmul FLOPs of tiny ZegCLIP training, by hand: the frozen tower's
    backward computes activation gradients only (1x its linear layers, none for the patch
    embedding; its fused attention 2.5x, torch's count for the CUDA kernels: the scores
    recomputed, then dP, dV, dQ and dK), the learnable prompt projection and decoder weight
    and input gradients (2x)."""
    n = (size // patch) ** 2  # patches
    t = n + 1 + prompts  # tokens: class, prompts, patches
    b, w, d, k = batch, width, dim, classes
    conv = 2 * b * n * 3 * patch * patch * w
    prompt_proj = blocks * 2 * prompts * w * w
    linear = blocks * 2 * b * t * (3 * w * w + w * w + 2 * 4 * w * w) + 2 * b * t * w * d
    attention = blocks * 2 * b * t * t * 2 * w
    # relationship descriptor; two full layers (q, k, logits, v, attn @ v, out, FFN 4x); the
    # last layer's q, k and logits
    full = 2 * b * (2 * k * d * d + 2 * n * d * d + 2 * k * n * d + 8 * k * d * d)
    last = 2 * b * (k * d * d + n * d * d + k * n * d)
    decoder = 2 * b * k * 2 * d * d + 2 * full + last
    forward = conv + prompt_proj + linear + attention + decoder
    backward = linear + attention * 5 // 2 + 2 * prompt_proj + 2 * decoder
    return forward, backward


def test_zegclip_synthetic_throughput(fp32_run):
    res = fp32_run
    assert res == json.loads(json.dumps(res))  # JSON as it is
    assert KEYS <= set(res), KEYS - set(res)
    assert res["device"] == "cpu" and res["precision"] == "fp32"
    assert res["meta_architecture"] == "ZegCLIP" and res["data"] == "synthetic"
    assert (res["batch"], res["size"], res["iters"]) == (2, 64, 2)
    assert res["input_shape"] == [64, 64]
    for key in ("it_per_s", "images_per_s", "s_per_iter", "peak_memory_gib", "tflops_achieved"):
        assert res[key] > 0, (key, res[key])
    assert res["images_per_s"] == pytest.approx(2 * res["it_per_s"])
    assert res["s_per_iter"] == pytest.approx(1 / res["it_per_s"])
    assert 0 <= res["data_share"] < 0.05  # one batch in memory: no waiting
    assert "RSS" in res["peak_memory_kind"]
    assert res["mfu"] is None and res["peak_tflops"] is None  # no CPU peak known
    assert res["flops_per_iter"] == res["flops_forward"] + res["flops_backward"] > 0
    # only prompts (3 blocks x 10 x 64, projection, norm) and the decoder learn
    assert 0 < res["learnable_params"] < res["total_params"]
    assert res["vocabulary_size"] == 15  # VOC's seen classes (inductive)
    assert res["optimizer"] == "AdamW"
    assert torch.isfinite(torch.tensor([res["loss_first"], res["loss_last"]])).all()


def test_zegclip_flops_are_the_models(fp32_run):
    # the counter sees every matmul of the model, the CPU's fused attention included: it
    # agrees with the count by hand at two sizes, and a 4x patch count scales it about so
    small = fp32_run
    big = _zegclip(size=128, iters=1, warmup=0)
    for res in (small, big):
        forward, backward = _tiny_flops(res["size"])
        assert res["flops_forward"] == pytest.approx(forward, rel=0.01), res["size"]
        assert res["flops_backward"] == pytest.approx(backward, rel=0.01), res["size"]
    ratio = big["flops_per_iter"] / small["flops_per_iter"]
    want = sum(_tiny_flops(128)) / sum(_tiny_flops(64))
    # below 4: the class token and the 10 prompts do not grow with the image
    assert ratio == pytest.approx(want, rel=0.01) and 2.5 < ratio < 4.5, ratio


def test_an_accumulated_step_counts_its_forwards(fp32_run):
    # a step of 2 images as two forwards of one: both counted, each by hand at batch 1 (the
    # prompt projection runs per forward, so a little more than one forward of 2)
    opts = [*TINY, "SOLVER.ACCUMULATE_STEPS", "2"]
    cfg = training_config(VOC, opts, device="cpu", batch=2, size=64)
    res = benchmark_training(cfg, iters=1, warmup=1, data="synthetic")
    assert (res["batch"], res["accumulate_steps"], fp32_run["accumulate_steps"]) == (2, 2, 1)
    assert res["images_per_s"] == pytest.approx(2 * res["it_per_s"])
    forward, backward = _tiny_flops(64, batch=1)
    assert res["flops_forward"] == pytest.approx(2 * forward, rel=0.01)
    assert res["flops_backward"] == pytest.approx(2 * backward, rel=0.01)
    assert fp32_run["flops_per_iter"] < res["flops_per_iter"] < 1.05 * fp32_run["flops_per_iter"]


def test_zegclip_bf16_autocast_on_cpu(fp32_run):
    res = _zegclip(precision="bf16", iters=1, warmup=1, peak_tflops=1.5)
    assert res["precision"] == "bf16" and res["it_per_s"] > 0
    assert res["flops_per_iter"] == fp32_run["flops_per_iter"]  # same work, other dtype
    assert res["peak_tflops"] == 1.5
    assert res["mfu"] == pytest.approx(res["tflops_achieved"] / 1.5)
    assert torch.isfinite(torch.tensor(res["loss_last"]))


def test_lseg_from_its_training_loader(toy_world, tmp_path):
    cfg = training_config(LSEG_TOY, device="cpu", batch=2, cache_dir=str(tmp_path))
    res = benchmark_training(cfg, iters=2, warmup=1)
    assert res["meta_architecture"] == "LSeg" and res["data"] == "loader"
    assert res["size"] is None and res["input_shape"] == [64, 64]  # the toy world's images
    assert res["batch"] == 2 and res["it_per_s"] > 0
    # the loader reads and augments PNGs in this process (NUM_WORKERS 0): a visible share
    assert 0 < res["data_share"] < 1
    assert res["data_s_per_iter"] == pytest.approx(res["data_share"] * res["s_per_iter"])
    assert res["vocabulary_size"] == 7  # background and the 6 seen shapes (inductive)
    assert res["flops_per_iter"] == res["flops_forward"] + res["flops_backward"] > 0


def test_maskclip_plus_with_the_teacher_in_the_loop(toy_world, tmp_path):
    # the teacher labels each original image in the training step (no store to read)
    online = ["MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE", "online", "DATASETS.PSEUDO_LABELS", ""]
    cfg = training_config(MASKCLIP_PLUS_TOY, online, device="cpu", batch=2, cache_dir=str(tmp_path))
    res = benchmark_training(cfg, iters=1, warmup=0)
    assert res["meta_architecture"] == "MaskCLIPPlus" and res["batch"] == 2
    assert res["it_per_s"] > 0 and res["flops_per_iter"] > 0
    assert math.isfinite(res["loss_last"])


def test_errors(monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        training_config("nope.yaml", device="cpu")
    with pytest.raises(ValueError, match="--size 72 is not a multiple of the patch size 16"):
        _zegclip(size=72, iters=1, warmup=0)
    with pytest.raises(ValueError, match="MaskCLIP has nothing to train"):
        benchmark_training(training_config(MASKCLIP, TINY, device="cpu"), iters=1, warmup=0)
    with pytest.raises(ValueError, match="batch must be >= 1, got 0"):
        training_config(VOC, device="cpu", batch=0)
    with pytest.raises(ValueError, match="data 'disk' is not one of"):
        benchmark_training(training_config(VOC, TINY, device="cpu"), iters=1, warmup=0, data="disk")
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        training_config(VOC, ["MODEL.DEVICE"], device="cpu")
    with pytest.raises(ValueError, match="neither 'cpu' nor 'cuda"):
        training_config(VOC, device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is unavailable.*--device cpu"):
        training_config(VOC, device="cuda")
