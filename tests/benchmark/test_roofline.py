"""ovseg.benchmark.roofline: a training step counted on fake tensors. Hand-made calls against
their FLOPs, bytes and floors by hand; the tiny ZegCLIP step against a real step's FLOP count
and its source lines; the command line and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from ovseg_testing import ROOT
from ovseg_testing.data import two_region_batch
from ovseg_testing.models import tiny_zegclip
from torch._subclasses.fake_tensor import FakeTensorMode

from ovseg.benchmark import flop_counter
from ovseg.benchmark.roofline import WorkCounter, bandwidth_tbps_for, peak_for, roofline
from ovseg.benchmark.roofline_runs import count_inference_work, count_step_work

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOY_ZEGCLIP = ROOT / "configs" / "toy" / "zegclip_toyvit_inductive_1200_bs16.yaml"


def test_hand_made_calls_count_their_flops_bytes_and_floors():
    # a device of 1 TFLOP/s and 1 GB/s: the matmul of (64, 32) x (32, 16) is 65536 FLOPs
    # (65.5 ns) over (2048 + 512 + 1024) x 4 bytes (14.3 us): memory-bound
    counter = WorkCounter(peak_flops=1e12, bandwidth=1e9)
    with FakeTensorMode() as mode:
        a, b = torch.empty(64, 32), torch.empty(32, 16)
        c = torch.empty(64, 16)
    with mode, counter:
        out = a @ b
        out.t()  # a view: no kernel
        c.add_(out)  # in place: reads c and out, writes c
        torch.empty(8)  # an allocation: no kernel
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (64, 16)
    res = roofline(counter)
    ops = {s["op"]: s for s in res["sites"]}
    assert set(ops) == {"mm", "add_"}, ops
    mm_bytes = (64 * 32 + 32 * 16 + 64 * 16) * 4
    assert (ops["mm"]["gflop"], ops["mm"]["gbytes"]) == (65536 / 1e9, mm_bytes / 1e9)
    assert ops["mm"]["floor_ms"] == pytest.approx(1e3 * mm_bytes / 1e9)
    assert ops["mm"]["bound"] == "memory"
    assert ops["add_"]["gbytes"] == 3 * 64 * 16 * 4 / 1e9
    assert res["flops"] == 65536 and res["bytes"] == mm_bytes + 3 * 64 * 16 * 4
    assert res["unfused_floor_ms"] == pytest.approx(1e3 * res["bytes"] / 1e9)
    assert res["flop_floor_ms"] == pytest.approx(1e3 * 65536 / 1e12)
    assert res["mfu_ceiling_unfused"] == pytest.approx(res["flop_floor_ms"] / res["bytes"] * 1e6)
    assert res["by_class"]["matmul"]["calls"] == 1 and res["by_class"]["other"]["calls"] == 1
    assert (res["fake_calls"], res["real_calls"]) == (2, 0)

    # a fast memory makes the same matmul compute-bound
    counter = WorkCounter(peak_flops=1e12, bandwidth=1e15)
    with mode, counter:
        a @ b
    (site,) = roofline(counter)["sites"]
    assert site["bound"] == "compute" and site["floor_ms"] == pytest.approx(1e3 * 65536 / 1e12)


def test_a_composite_op_counts_as_what_it_decomposes_into():
    # in inference mode (the teacher's dense forward) fake tensors reach the mode as
    # conv2d, not as the convolution torch counts: counted as FlopCounterMode counts them
    counter = WorkCounter(peak_flops=1e12, bandwidth=1e12)
    with FakeTensorMode() as mode:
        x, w = torch.empty(2, 3, 8, 8), torch.empty(4, 3, 3, 3)
    with mode, counter, torch.inference_mode():
        out = torch.nn.functional.conv2d(x, w)
    assert tuple(out.shape) == (2, 4, 6, 6)
    res = roofline(counter)
    assert res["flops"] == 2 * (2 * 4 * 6 * 6) * (3 * 3 * 3)
    assert res["by_class"]["matmul"]["calls"] == 1

    # as the device runs it: torch's C++ composite, not its Python decomposition, so a
    # bilinear upsample is one kernel reading its input and writing its output (the Python
    # one is gathers and arithmetic over the output, about 5 passes over its bytes)
    counter = WorkCounter(peak_flops=1e12, bandwidth=1e12)
    with mode:
        scores = torch.empty(2, 5, 8, 8)
    with mode, counter, torch.inference_mode():
        up = torch.nn.functional.interpolate(scores, size=(64, 64), mode="bilinear")
    assert tuple(up.shape) == (2, 5, 64, 64)
    (site,) = roofline(counter)["sites"]
    assert site["op"] == "upsample_bilinear2d" and site["calls"] == 1
    assert site["gbytes"] == 2 * 5 * (8 * 8 + 64 * 64) * 4 / 1e9


def test_a_fake_step_counts_the_real_steps_flops_and_names_its_source_lines(tmp_path):
    model = tiny_zegclip(tmp_path, seed=0).train()
    batch = two_region_batch(size=32)
    sum(model(batch).values()).backward()  # the text embeddings memoised, as in a fake warm-up
    model.zero_grad(set_to_none=True)
    with flop_counter() as real:
        sum(model(batch).values()).backward()
    model.zero_grad(set_to_none=True)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    counter = count_step_work(model, batch, peak_tflops=989.5, bandwidth_tbps=4.8)
    res = roofline(counter)
    assert res["flops"] == real.get_total_flops() > 0
    # the images' work ran on fake tensors; only what reads the labels or the weights alone
    # (the targets, the memoised prompts' projection) ran for real
    assert res["fake_calls"] > 4 * res["real_calls"] > 0, (res["fake_calls"], res["real_calls"])
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())

    # the attention's forward and backward both point at the line that calls it
    source = (ROOT / "ovseg" / "clip" / "attention.py").read_text().splitlines()
    line = 1 + next(i for i, t in enumerate(source) if "F.scaled_dot_product_attention(" in t)
    sites = {(s["op"], s["site"]) for s in res["sites"]}
    assert (
        "_scaled_dot_product_flash_attention_for_cpu",
        f"ovseg/clip/attention.py:{line}",
    ) in sites
    assert (
        "_scaled_dot_product_flash_attention_for_cpu_backward",
        f"backward of ovseg/clip/attention.py:{line}",
    ) in sites
    assert res["by_class"]["attention"]["calls"] == 6  # 3 blocks, forward and backward
    # each call's floor is at least its FLOPs' and its bytes' (to the sums' rounding)
    assert res["unfused_floor_ms"] >= max(res["flop_floor_ms"], res["byte_floor_ms"]) * (1 - 1e-12)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_a_fake_test_forward_counts_the_real_forwards_flops(tmp_path, mode):
    from ovseg_testing.data import random_image

    model = tiny_zegclip(tmp_path, seed=0).eval()
    model.inference_mode, model.slide_window, model.slide_stride = mode, (32, 32), (24, 24)
    # two images of one size share a forward; 40 x 70 gives two rows and three columns of
    # windows, and a resize to the original size
    inputs = [
        {"image": random_image(40, 70), "vocabulary": ["cat", "dog", "sky"], "height": 50,
         "width": 90}
        for _ in range(2)
    ]  # fmt: skip
    with torch.no_grad():
        model(inputs)  # the text embeddings memoised, as in the fake warm-up
    with flop_counter() as real:  # with autograd on: the counter's module tracker hooks in
        model(inputs)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    counter = count_inference_work(model, inputs, peak_tflops=989.5, bandwidth_tbps=4.8)
    res = roofline(counter)
    assert res["flops"] == real.get_total_flops() > 0
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    ops = {s["op"] for s in res["sites"]}
    assert "upsample_bilinear2d" in ops  # the scores resized, each one kernel
    assert "_scaled_dot_product_flash_attention_for_cpu" in ops
    assert not any("backward" in s["site"] for s in res["sites"])
    forwards = res["by_class"]["attention"]["calls"] // 3  # 3 blocks
    assert forwards == (6 if mode == "slide" else 1)


class _ReadsItsOutput(torch.nn.Module):
    """A step that asks the host about what its network computed, as a matcher does."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, batch):
        out = self.linear(batch[0]["image"])
        if bool((out > 0).any()):  # a value: fake tensors hold none
            out = out * 2
        return {"loss": out.sum()}


def test_a_step_reading_its_networks_values_is_refused_with_where(tmp_path):
    model = tiny_zegclip(tmp_path, seed=0)
    with pytest.raises(TypeError, match="list of dicts"):
        count_step_work(model, torch.zeros(1), peak_tflops=1.0, bandwidth_tbps=1.0)
    with pytest.raises(ValueError, match="_ReadsItsOutput's step reads the values") as e:
        count_step_work(
            _ReadsItsOutput(), [{"image": torch.ones(3, 4)}], peak_tflops=1.0, bandwidth_tbps=1.0
        )
    assert "test_roofline.py" in str(e.value) and "tools/benchmark.py train" in str(e.value)


def test_device_tables_and_overrides():
    assert bandwidth_tbps_for("NVIDIA H200") == 4.8
    assert bandwidth_tbps_for("NVIDIA H100 80GB HBM3") == 3.35
    assert bandwidth_tbps_for("NVIDIA H100 NVL") == 3.9
    assert peak_for("NVIDIA H200", "bf16", None, None) == (989.5, 4.8)
    assert peak_for("My GPU", "bf16", 100.0, 2.0) == (100.0, 2.0)
    with pytest.raises(ValueError, match="--peak-tflops and --bandwidth-tbps"):
        peak_for("My GPU", "bf16", 100.0, None)


def test_the_command_counts_a_config(tmp_path):
    out = tmp_path / "roofline.json"
    cmd = [
        sys.executable, str(ROOT / "tools" / "benchmark.py"), "roofline",
        "--config-file", str(TOY_ZEGCLIP), "--batch", "2", "--size", "64", "--precision", "bf16",
        "--top", "5", "--output", str(out), "--cache-dir", str(tmp_path / "clip"),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res == json.loads(run.stdout)
    assert (res["meta_architecture"], res["batch"], res["side"]) == ("ZegCLIP", 2, 64)
    assert (res["precision"], res["device_name"], res["peak_tflops"]) == (
        "bf16",
        "NVIDIA H200",
        989.5,
    )
    assert len(res["sites"]) == 5 and res["flops"] > 0 and res["bytes"] > 0
    assert "unfused floor" in run.stderr and "MFU at the unfused floor" in run.stderr
    # the text tower ran for real: its cached embeddings are real numbers for a later run
    (cached,) = (tmp_path / "clip" / "text_embeddings").glob("*.pt")
    record = torch.load(cached, map_location="cpu", weights_only=True)
    assert type(record["embeddings"]) is torch.Tensor
    assert record["embeddings"].shape[0] == len(record["names"]) > 0
    assert record["embeddings"].isfinite().all()


def test_an_unknown_device_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    from ovseg_testing.demo import load_script

    from ovseg.utils.cli import run_reporting_errors

    tool = load_script(ROOT / "tools" / "benchmark.py")
    argv = ["roofline", "--config-file", str(TOY_ZEGCLIP), "--device-name", "My GPU",
            "--cache-dir", str(tmp_path / "clip")]  # fmt: skip
    status = run_reporting_errors("benchmark.py", lambda: tool.main(argv))
    err = capsys.readouterr().err
    assert status == 2, err[-3000:]
    assert "no peak FLOP/s or memory bandwidth known for device 'My GPU'" in err
    assert "Traceback" not in err and not (tmp_path / "clip").exists()


def test_the_command_counts_a_test_forward_and_keeps_the_sizes_apart(tmp_path, capsys):
    from ovseg_testing.demo import load_script

    from ovseg.utils.cli import run_reporting_errors

    tool = load_script(ROOT / "tools" / "benchmark.py")
    base = ["roofline", "--infer", "--config-file", str(TOY_ZEGCLIP), "--cache-dir",
            str(tmp_path / "clip"), "--top", "3"]  # fmt: skip
    slide = ["TEST.INFERENCE_MODE", "slide", "TEST.SLIDE_WINDOW", "(64, 64)",
             "TEST.SLIDE_STRIDE", "(48, 48)"]  # fmt: skip
    res = tool.main([*base, "--batch", "2", "--image-size", "64", "96", *slide])
    assert (res["counted"], res["batch"], res["side"]) == ("slide", 2, [64, 96])
    assert res["flops"] > 0 and len(res["sites"]) == 3
    err = capsys.readouterr().err
    assert "slide test forward" in err and "images/s at the unfused floor" in err
    # the training crop and the test image are different flags
    status = run_reporting_errors("benchmark.py", lambda: tool.main([*base, "--size", "64"]))
    err = capsys.readouterr().err
    assert status == 2, err[-3000:]
    assert "--size is the training crop; with --infer give --image-size H W" in err
