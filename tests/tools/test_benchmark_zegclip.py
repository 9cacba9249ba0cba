"""tools/benchmark.py zegclip: training throughput of the VOC ZegCLIP config on the tiny CLIP,
its FLOP count checked against a count by hand, and its errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from ovseg_testing import ROOT

VOC = str(ROOT / "configs" / "voc" / "zegclip" / "zegclip_vitb16_inductive_20k_bs16.yaml")
TINY = ["MODEL.CLIP.MODEL_NAME", str(ROOT / "configs" / "clip" / "tiny_vit.json")]
KEYS = {
    "device", "precision", "batch", "size", "iters", "it_per_s", "images_per_s", "s_per_iter",
    "peak_memory_gib", "peak_memory_kind", "flops_forward", "flops_backward", "flops_per_iter",
    "flops_convention", "tflops_achieved", "peak_tflops", "mfu", "learnable_params",
    "total_params", "torch", "loss_first", "loss_last",
}  # fmt: skip


def _load_tool():
    spec = importlib.util.spec_from_file_location("bench_zegclip", ROOT / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_tool()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(size=64, precision="fp32", iters=2, warmup=1, extra=(), json_path=None):
    args = ["--json", str(json_path)] if json_path else []
    args += ["zegclip", "--config-file", VOC, "--batch", "2", "--size", str(size)]
    args += ["--iters", str(iters), "--warmup", str(warmup), "--precision", precision]
    return bench.main(args + ["--device", "cpu", *extra, *TINY])


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "zegclip.json"
    return _run(json_path=out), json.loads(out.read_text())


def _tiny_flops(size, batch=2, patch=16, width=64, blocks=3, prompts=10, dim=32, classes=15):
    """(forward, backward) matmul FLOPs of tiny ZegCLIP training, by hand: the frozen tower's
    backward computes activation gradients only (1x its linear layers, 2x its attention, none
    for the patch embedding), the learnable prompt projection and decoder weight and input
    gradients (2x)."""
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
    backward = linear + 2 * attention + 2 * prompt_proj + 2 * decoder
    return forward, backward


def test_zegclip_subcommand_reports_throughput(fp32_run):
    res, written = fp32_run
    assert written == json.loads(json.dumps(res))
    assert KEYS <= set(res), KEYS - set(res)
    assert res["device"] == "cpu" and res["precision"] == "fp32"
    assert (res["batch"], res["size"], res["iters"]) == (2, 64, 2)
    for key in ("it_per_s", "images_per_s", "s_per_iter", "peak_memory_gib", "tflops_achieved"):
        assert res[key] > 0, (key, res[key])
    assert res["images_per_s"] == pytest.approx(2 * res["it_per_s"])
    assert res["s_per_iter"] == pytest.approx(1 / res["it_per_s"])
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
    small = fp32_run[0]
    big = _run(size=128, iters=1, warmup=0)
    for res in (small, big):
        forward, backward = _tiny_flops(res["size"])
        assert res["flops_forward"] == pytest.approx(forward, rel=0.01), res["size"]
        assert res["flops_backward"] == pytest.approx(backward, rel=0.01), res["size"]
    ratio = big["flops_per_iter"] / small["flops_per_iter"]
    want = sum(_tiny_flops(128)) / sum(_tiny_flops(64))
    # below 4: the class token and the 10 prompts do not grow with the image
    assert ratio == pytest.approx(want, rel=0.01) and 2.5 < ratio < 4.5, ratio


def test_zegclip_bf16_autocast_on_cpu(fp32_run):
    res = _run(precision="bf16", iters=1, warmup=1, extra=["--peak-tflops", "1.5"])
    assert res["precision"] == "bf16" and res["it_per_s"] > 0
    assert res["flops_per_iter"] == fp32_run[0]["flops_per_iter"]  # same work, other dtype
    assert res["peak_tflops"] == 1.5
    assert res["mfu"] == pytest.approx(res["tflops_achieved"] / 1.5)
    assert torch.isfinite(torch.tensor(res["loss_last"]))


def test_peak_tflops_table():
    from benchmark_zegclip import peak_tflops_for  # tools/ is on sys.path once loaded

    assert peak_tflops_for("NVIDIA H200", "bf16") == 989.5
    assert peak_tflops_for("NVIDIA H100 80GB HBM3", "fp16") == 989.5
    assert peak_tflops_for("NVIDIA H100 PCIe", "bf16") == 756.5
    assert peak_tflops_for("Some Future GPU", "bf16") is None
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert peak_tflops_for("NVIDIA H200", "fp32") == 67.0
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores
        assert peak_tflops_for("NVIDIA H200", "fp32") == 494.7
    finally:
        torch.set_float32_matmul_precision(precision)


def test_zegclip_errors(monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        bench.main(["zegclip", "--config-file", "nope.yaml", "--device", "cpu"])
    with pytest.raises(ValueError, match="--size 72 is not a multiple of the patch size 16"):
        _run(size=72, iters=1, warmup=0)
    other = str(ROOT / bench.MASKCLIP_PLUS_CONFIG)
    with pytest.raises(ValueError, match="not 'ZegCLIP'"):
        bench.main(["zegclip", "--config-file", other, "--device", "cpu", *TINY])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is unavailable.*--device cpu"):
        bench.main(["zegclip", "--device", "cuda", "--config-file", VOC])
    with pytest.raises(SystemExit):  # argparse: --batch must be >= 1
        bench.main(["zegclip", "--batch", "0", "--device", "cpu"])
