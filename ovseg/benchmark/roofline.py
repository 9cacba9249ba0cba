"""A training step's or a test forward's work as a device would do it, counted on the CPU
without computing it.

The model runs with its weights as fake tensors (``roofline_runs.py``: torch's
``FakeTensorMode``, shapes, dtypes and strides, no data), so everything the network computes
is fake and a config's real batch and image size need no GPU, no activation memory and little
time; operators whose inputs are all real tensors (what the host makes of the inputs: the
label check, the targets, the padding's content mask) run for real, as they would. A warm-up
run fills the model's caches first, so the counted one is a steady-state one. For each
operator call, :class:`WorkCounter` records:

- FLOPs: the counter of ``flops.py`` (matmuls, convolutions and attention, 2 per
  multiply-add; what MFU counts);
- bytes: each tensor it reads and writes once (at most its storage), views none;
- its floor on a device: max(FLOPs / peak FLOP/s, bytes / memory bandwidth), the roofline.

Summed over the run (:func:`roofline`): the FLOP floor (every FLOP at peak, i.e. 100% MFU),
the byte floor, and the unfused floor (every operator its own kernel at its roofline: the best
an eager run can do; fusion, e.g. ``MODEL.COMPILE``, removes bytes, not FLOPs). Each call is
attributed to its innermost ovseg or open_clip source line, a backward call to the forward
line that recorded it (autograd's anomaly metadata). The optimizer update is not counted
(about 1% of the ZegCLIP step on the H200).

Precision: the run is under the CPU's autocast in the config's SOLVER.AMP dtype, which casts
the same matmuls, convolutions and attention to 16 bits as CUDA's but keeps norms, softmax and
reductions of 16-bit inputs in 16 bits, where CUDA's autocast runs them in float32: for those
the bytes are a lower bound of a CUDA run's. A test forward is counted with torch's fused
inference attention (``_native_multi_head_attention``, one operator of no FLOPs to the
counter) switched off: ovseg's token-major attention, the same products, runs in its place.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
)
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

from .flops import flop_counter, peak_tflops_for

__all__ = ["HBM_TBPS", "WorkCounter", "bandwidth_tbps_for", "peak_for", "roofline"]

# Memory bandwidth (TB/s) from NVIDIA's data sheets; the first fragment found in the device
# name wins (so the longer names first)
HBM_TBPS: Tuple[Tuple[str, float], ...] = (
    ("H200", 4.8),  # SXM and NVL
    ("H100 NVL", 3.9),
    ("H100 PCIe", 2.0),
    ("H100", 3.35),  # SXM
    ("A100-SXM4-80GB", 2.039),
    ("A100 80GB PCIe", 1.935),
    ("A100", 1.555),  # 40 GB
)
# operators that make or alias a tensor without moving its bytes (the aliasing ones are
# found by their schema: ``OpOverload.is_view``)
_NO_BYTES = {
    "detach", "alias", "lift_fresh", "_unsafe_view", "empty", "empty_like", "empty_strided",
    "new_empty", "new_empty_strided", "_local_scalar_dense", "sym_size", "sym_stride",
}  # fmt: skip
_MATMULS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "convolution", "convolution_backward"}
_SOURCES = ("ovseg", "open_clip")
# what a fake tensor raises when asked for values (a host read, a data-dependent shape)
_FAKE_ERRORS = (DataDependentOutputException, DynamicOutputShapeException)
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def bandwidth_tbps_for(device_name: str) -> Optional[float]:
    """Memory bandwidth (TB/s) of a CUDA device by name (``HBM_TBPS``), or None."""
    for fragment, tbps in HBM_TBPS:
        if fragment in device_name:
            return tbps
    return None


def _source(path: str, line: int) -> Optional[str]:
    """ "ovseg/clip/attention.py:83" for a file of ovseg or open_clip, else None."""
    parts = path.replace("\\", "/").split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in _SOURCES:
            return "/".join(parts[i:]) + f":{line}"
    return None


def _model_site(frames: Iterable[Tuple[str, int]]) -> Optional[str]:
    """The first ovseg or open_clip line of (path, line) ``frames``, innermost first,
    outside this benchmark's own code."""
    for path, line in frames:
        site = _source(path, line)
        if site is not None and not site.startswith("ovseg/benchmark/"):
            return site
    return None


def _live_frames():
    frame = sys._getframe(1)
    while frame is not None:
        yield frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back


def _backward_site(node) -> str:
    """The innermost ovseg/open_clip line of the forward that recorded ``node``."""
    trace = node.metadata.get("traceback_") if hasattr(node, "metadata") else None
    frames = [(p, int(n)) for entry in trace or [] for p, n in _FRAME.findall(str(entry))]
    site = _model_site(reversed(frames))
    return f"backward of {site}" if site else f"backward ({node.name()})"


def _nbytes(t: torch.Tensor) -> int:
    """What an operator reads or writes of ``t``: its elements, at most its storage."""
    size = t.numel() * t.element_size()
    try:
        return min(size, t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):  # e.g. a sparse or nested tensor
        return size


class WorkCounter(TorchDispatchMode):
    """Context manager recording each operator call's FLOPs, bytes and roofline floor by
    (operator, source line). Inside a ``FakeTensorMode`` a call with a fake tensor among its
    arguments runs on fake tensors and a call whose tensors are all real runs for real
    (``fake_calls`` and ``real_calls`` count them); outside one every call runs for real.

    Args:
        peak_flops (float): the device's peak FLOP/s.
        bandwidth (float): its memory bandwidth, bytes/s.
    """

    def __init__(self, peak_flops: float, bandwidth: float) -> None:
        super().__init__()
        self.peak_flops, self.bandwidth = peak_flops, bandwidth
        self._flops = flop_counter().flop_registry
        #: (op, site) -> {"calls", "flops", "bytes", "floor_s"}
        self.records: Dict[Tuple[str, str], Dict[str, float]] = defaultdict(
            lambda: {"calls": 0, "flops": 0, "bytes": 0, "floor_s": 0.0}
        )
        #: False: calls are run, not recorded (a warm-up step)
        self.recording = True
        #: recorded calls on fake tensors and on real ones
        self.fake_calls = self.real_calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket not in self._flops and func.namespace != "prim":
            # a composite op (conv2d, batch_norm, interpolate: in inference mode they reach
            # the mode undecomposed) counts as what it decomposes into, as FlopCounterMode
            # does, but as the device runs it: torch's C++ composite first (an upsample is
            # one kernel there; its Python decomposition, which ``decompose`` prefers, is
            # gathers and arithmetic over the output, 5 passes over its bytes)
            with self:
                out = _composite(func, args, kwargs)
            if out is not NotImplemented:
                return out
        leaves = tree_leaves((args, kwargs))
        fake = any(isinstance(x, FakeTensor) for x in leaves)
        if fake:
            out = func(*args, **kwargs)
        else:  # real inputs: a real result, as on the device
            with _disable_current_modes():
                out = func(*args, **kwargs)
        if self.recording:
            self._record(func, args, kwargs, leaves, out, fake)
        return out

    def _record(self, func, args, kwargs, leaves, out, fake: bool) -> None:
        name = func.overloadpacket.__name__
        if name in _NO_BYTES or getattr(func, "is_view", False) or func.namespace == "prim":
            return  # no kernel: a view, an allocation, a metadata query (prim::device)
        outputs = [x for x in tree_leaves(out) if isinstance(x, torch.Tensor)]
        if not outputs and not func._schema.is_mutable:
            return
        self.fake_calls += fake
        self.real_calls += not fake
        flop_fn = self._flops.get(func.overloadpacket)
        flops = int(flop_fn(*args, **kwargs, out_val=out)) if flop_fn else 0
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)] + outputs
        nbytes = sum(_nbytes(t) for t in tensors)
        node = torch._C._current_autograd_node()
        site = _backward_site(node) if node is not None else _model_site(_live_frames()) or "torch"
        rec = self.records[(name, site)]
        rec["calls"] += 1
        rec["flops"] += flops
        rec["bytes"] += nbytes
        rec["floor_s"] += max(flops / self.peak_flops, nbytes / self.bandwidth)


def _composite(func, args, kwargs):
    """``func`` run as its C++ CompositeImplicitAutograd kernel, else its Python
    decomposition, else NotImplemented."""
    key = torch._C.DispatchKey.CompositeImplicitAutograd
    if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), key):
        return func._op_dk(key, *args, **kwargs)
    return func.decompose(*args, **kwargs)


def _op_class(op: str) -> str:
    if "attention" in op:
        return "attention"
    return "matmul" if op in _MATMULS else "other"


def roofline(counter: WorkCounter) -> Dict[str, Any]:
    """The counted step's totals, per operator class ("matmul", "attention", "other") and
    per (operator, source line), the costliest first.

    Returns:
        dict: flops, bytes, calls, flop_floor_ms, byte_floor_ms, unfused_floor_ms,
        mfu_ceiling_unfused (FLOP floor / unfused floor), fake_calls, real_calls, by_class,
        sites.
    """
    sites = [
        {"op": op, "site": site, "calls": r["calls"], "gflop": r["flops"] / 1e9,
         "gbytes": r["bytes"] / 1e9, "floor_ms": 1e3 * r["floor_s"],
         "bound": "compute" if r["flops"] / counter.peak_flops > r["bytes"] / counter.bandwidth
         else "memory"}
        for (op, site), r in counter.records.items()
    ]  # fmt: skip
    sites.sort(key=lambda s: -s["floor_ms"])
    by_class: Dict[str, Dict[str, float]] = {}
    for s in sites:
        keys = ("calls", "gflop", "gbytes", "floor_ms")
        c = by_class.setdefault(_op_class(s["op"]), dict.fromkeys(keys, 0))
        for key in keys:
            c[key] += s[key]
    flops = sum(r["flops"] for r in counter.records.values())
    nbytes = sum(r["bytes"] for r in counter.records.values())
    unfused = sum(s["floor_ms"] for s in sites)
    flop_floor = 1e3 * flops / counter.peak_flops
    return {
        "flops": flops, "bytes": nbytes, "calls": sum(s["calls"] for s in sites),
        "flop_floor_ms": flop_floor, "byte_floor_ms": 1e3 * nbytes / counter.bandwidth,
        "unfused_floor_ms": unfused,
        "mfu_ceiling_unfused": flop_floor / unfused if unfused else None,
        "fake_calls": counter.fake_calls, "real_calls": counter.real_calls,
        "by_class": by_class, "sites": sites,
    }  # fmt: skip


def peak_for(
    device_name: str, precision: str, peak_tflops: Optional[float], bandwidth_tbps: Optional[float]
) -> Tuple[float, float]:
    """(peak TFLOP/s, bandwidth TB/s) for a device name, the given values first."""
    peak = peak_tflops or peak_tflops_for(device_name, precision)
    bandwidth = bandwidth_tbps or bandwidth_tbps_for(device_name)
    if peak is None or bandwidth is None:
        raise ValueError(
            f"no peak FLOP/s or memory bandwidth known for device {device_name!r} (known: "
            f"{[f for f, _ in HBM_TBPS]}); pass --peak-tflops and --bandwidth-tbps"
        )
    return peak, bandwidth
