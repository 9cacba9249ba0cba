"""FLOP counting and model-FLOPs utilisation (MFU).

Convention: ``torch.utils.flop_counter.FlopCounterMode`` counts the matmul, convolution and
attention FLOPs (2 per multiply-add) of real calls; element-wise work, norms, softmax,
interpolation and optimizer updates are not counted, so MFU slightly understates the work
done. MFU = FLOPs per iteration x iterations/s / the device's dense peak FLOP/s at the
precision.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["PEAK_TFLOPS", "flop_counter", "peak_tflops_for"]

# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets, (name fragment, bf16/fp16,
# tf32, fp32 without tensor cores); the first fragment found in the device name wins.
PEAK_TFLOPS: Tuple[Tuple[str, float, float, float], ...] = (
    ("H100 PCIe", 756.5, 378.0, 51.0),
    ("NVL", 835.5, 417.5, 60.0),  # H100 NVL, H200 NVL
    ("H200", 989.5, 494.7, 67.0),  # SXM
    ("H100", 989.5, 494.7, 67.0),  # SXM
    ("A100", 312.0, 156.0, 19.5),
)


def peak_tflops_for(device_name: str, precision: str) -> Optional[float]:
    """Dense peak TFLOP/s of a CUDA device at a precision, or None for an unknown device.

    fp32 counts TF32 tensor cores when ``torch.get_float32_matmul_precision()`` allows them.

    Args:
        device_name (str): e.g. ``torch.cuda.get_device_name()``, "NVIDIA H200".
        precision (str): "fp32", "bf16" or "fp16".

    Returns:
        float or None: TFLOP/s.
    """
    for fragment, half, tf32, fp32 in PEAK_TFLOPS:
        if fragment in device_name:
            if precision in ("bf16", "fp16"):
                return half
            return tf32 if torch.get_float32_matmul_precision() != "highest" else fp32
    return None


def _shape(x) -> Tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else tuple(x)


def _attention_flops(query, key, value) -> int:
    """2 * (Q K^T + P V) multiply-adds for (B, H, L, E) queries and (B, H, S, E) keys."""
    *batch, length, e = _shape(query)
    s, ev = _shape(key)[-2], _shape(value)[-1]
    return 2 * int(np.prod(batch)) * length * s * (e + ev)


def _cpu_attention_flops(query, key, value, *args, **kwargs) -> int:
    return _attention_flops(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    """torch's count for the CUDA kernels' backward (``sdpa_backward_flop_count``): the
    scores recomputed, then dP, dV, dQ and dK, 2.5x the forward, so that the CPU and CUDA
    count one convention."""
    *batch, length, e = _shape(query)
    s, ev = _shape(key)[-2], _shape(value)[-1]
    return 2 * int(np.prod(batch)) * length * s * (3 * e + 2 * ev)


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also knows the CPU's fused attention kernels, which
    torch does not count.

    Returns:
        FlopCounterMode: use as a context manager, then ``get_total_flops()``.
    """
    mapping = {}
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_attention_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_attention_backward_flops),
    ):
        try:
            mapping[getattr(torch.ops.aten, name)] = fn
        except (AttributeError, RuntimeError):  # a torch without this kernel
            pass
    return FlopCounterMode(display=False, custom_mapping=mapping)
