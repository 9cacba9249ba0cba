"""Counting the operations of a step that make the host wait for the device.

On CUDA, reading a value back (``.item()``, ``int(t)``, ``bool(t)``, ``.tolist()``), an op
whose output size depends on the data (``nonzero``, boolean-mask indexing, ``unique``,
``masked_select``) and a blocking copy between host and device all wait for the device's
queue to drain, so the host cannot queue the next kernels while the device works.
:class:`HostSyncCounter` counts such ops as they are dispatched, on any device, so a test on
the CPU proves a training step free of them; on CUDA, ``torch.cuda.set_sync_debug_mode``
reports the rest (blocking copies), which :func:`count_cuda_syncs` counts.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Callable, Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNC_OPS", "HostSyncCounter", "count_cuda_syncs", "paused_during"]

# aten overload packets whose result the host must wait for
SYNC_OPS = (
    "_local_scalar_dense",  # .item(), int(), float(), bool() of a tensor
    "nonzero",
    "nonzero_static",
    "masked_select",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "is_nonzero",
    "equal",
    "allclose",
    "repeat_interleave",
)


def _is_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(t, torch.Tensor) and t.dtype == torch.bool
        for t in (indices or ())
        if t is not None
    )


class HostSyncCounter(TorchDispatchMode):
    """Context manager counting host-synchronising ops by name (``counts``, ``total``).

    ``tolist()`` of a CUDA tensor is a device-to-host copy (counted as ``_to_copy`` to the
    CPU); ``x[mask]`` with a boolean mask is counted as ``index[bool]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()
        #: while True nothing is counted (see :func:`paused_during`)
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if self.paused:
            pass
        elif name in SYNC_OPS:
            self.counts[name] += 1
        elif name in ("index", "index_put_", "index_put") and _is_bool_index(args):
            self.counts[f"{name}[bool]"] += 1
        elif name in ("_to_copy", "copy_") and _crosses_to_host(func, args, kwargs):
            self.counts["device_to_host_copy"] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def paused_during(counter: HostSyncCounter, optimizer) -> None:
    """Count nothing inside ``optimizer.step`` (until ``del optimizer.step``): torch keeps a
    non-fused optimizer's step counters on the host, whose ``.item()`` waits for nothing,
    and a fused CUDA optimizer reads nothing back."""
    step = optimizer.step

    def quiet_step(*args, **kwargs):
        counter.paused = True
        try:
            return step(*args, **kwargs)
        finally:
            counter.paused = False

    optimizer.step = quiet_step


def _crosses_to_host(func, args, kwargs) -> bool:
    src = args[1] if func.overloadpacket.__name__ == "copy_" else args[0]
    dst_device = args[0].device if func.overloadpacket.__name__ == "copy_" else kwargs.get("device")
    if not isinstance(src, torch.Tensor) or dst_device is None:
        return False
    return src.device.type == "cuda" and torch.device(dst_device).type == "cpu"


def count_cuda_syncs(fn: Callable[[], object]) -> Dict[str, int]:
    """Run ``fn`` with CUDA's synchronisation debug mode on and count its warnings.

    Returns:
        dict: "cuda_sync_warnings" (every synchronising CUDA call torch reports) and
        "dispatch" (:class:`HostSyncCounter`'s total for the same call).
    """
    with warnings.catch_warnings(record=True) as caught, HostSyncCounter() as counter:
        warnings.simplefilter("always")
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return {"cuda_sync_warnings": len(syncs), "dispatch": counter.total, **counter.counts}
