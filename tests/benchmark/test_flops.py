"""ovseg.benchmark.flops: the peak FLOP/s table by device name and precision."""

import torch

from ovseg.benchmark import peak_tflops_for


def test_peak_tflops_table():
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
