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


def test_the_cpus_fused_attention_counts_as_torch_counts_the_cuda_kernels():
    # torch counts no FLOPs for the CPU's flash kernels; ovseg's counter counts them by
    # torch's formulas for the CUDA ones (the backward recomputes the scores: 2.5x the
    # forward), so CPU and GPU benchmarks of one config count the same FLOPs
    from torch.nn.functional import scaled_dot_product_attention
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    from ovseg.benchmark import flop_counter

    q = torch.randn(2, 3, 17, 8, requires_grad=True)
    k, v = (torch.randn(2, 3, 13, 8, requires_grad=True) for _ in range(2))
    with flop_counter() as forward:
        out = scaled_dot_product_attention(q, k, v)
    with flop_counter() as backward:
        out.sum().backward()
    kernels = {op.__name__ for op in backward.get_flop_counts()["Global"]}
    assert kernels == {"_scaled_dot_product_flash_attention_for_cpu_backward"}, kernels
    assert forward.get_total_flops() == sdpa_flop_count(q.shape, k.shape, v.shape) == 42432
    assert backward.get_total_flops() == sdpa_backward_flop_count(
        out.shape, q.shape, k.shape, v.shape
    )
    assert backward.get_total_flops() == 5 * forward.get_total_flops() // 2
