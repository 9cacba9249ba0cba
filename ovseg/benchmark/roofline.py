"""A training step's work as a device would do it, counted on the CPU without computing it.

One training forward and backward runs with the model's weights as fake tensors (torch's
``FakeTensorMode``: shapes, dtypes and strides, no data), so everything the network computes
is fake and a config's real batch and crop size need no GPU, no activation memory and little
time; operators whose inputs are all real tensors (what the host makes of the inputs: the
label check, the targets, the padding's content mask) run for real, as they would. A warm-up
forward and backward fills the model's caches first, so the counted one is a steady-state
step. For each operator call:

- FLOPs: the counter of ``flops.py`` (matmuls, convolutions and attention, 2 per
  multiply-add; what MFU counts);
- bytes: each tensor it reads and writes once (at most its storage), views none;
- its floor on a device: max(FLOPs / peak FLOP/s, bytes / memory bandwidth), the roofline.

Summed over the step: the FLOP floor (every FLOP at peak, i.e. 100% MFU), the byte floor, and
the unfused floor (every operator its own kernel at its roofline: the best an eager step can
do; fusion, e.g. ``MODEL.COMPILE``, removes bytes, not FLOPs). Each call is attributed to its
innermost ovseg or open_clip source line, a backward call to the forward line that recorded it
(autograd's anomaly metadata). The optimizer update is not counted (about 1% of the ZegCLIP
step on the H200).

Precision: the step runs under the CPU's autocast in the config's SOLVER.AMP dtype, which
casts the same matmuls, convolutions and attention to 16 bits as CUDA's but keeps norms,
softmax and reductions of 16-bit inputs in 16 bits, where CUDA's autocast runs them in float32:
for those the bytes are a lower bound of a CUDA step's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import sys
import traceback
from collections import defaultdict
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
)
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

from .flops import flop_counter, peak_tflops_for

__all__ = [
    "HBM_TBPS",
    "WorkCounter",
    "bandwidth_tbps_for",
    "benchmark_roofline",
    "count_step_work",
    "peak_for",
    "roofline",
]

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
            # a composite op (conv2d, batch_norm: in inference mode, e.g. the teacher's dense
            # forward, they reach the mode undecomposed) counts as what it decomposes into,
            # as FlopCounterMode does
            with self:
                out = func.decompose(*args, **kwargs)
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


def count_step_work(
    model: torch.nn.Module,
    batch: Any,
    *,
    peak_tflops: float,
    bandwidth_tbps: float,
    autocast_dtype: Optional[torch.dtype] = None,
) -> WorkCounter:
    """One warm-up and one recorded training forward and backward (the sum of the model's
    losses, as detectron2's step) of ``model`` on ``batch`` with fake weights: whatever the
    network computes runs on fake tensors; what reads only the inputs (the host's label check,
    the targets made from the labels, the padding's content mask) runs for real, as the host
    does it.

    The model's own parameters and buffers are not touched (``torch.func.functional_call``
    runs it on fake copies), but for the CLIP teachers' text towers, which stay real: the
    text embeddings are real, cached once per vocabulary as in training. Other caches the
    step fills (memoised tensors) may hold fake tensors afterwards, so build the model for
    this alone.

    Args:
        model (nn.Module): a built training model on the CPU.
        batch (list[dict]): its training inputs, real tensors.
        peak_tflops (float): the device's peak TFLOP/s at the step's precision.
        bandwidth_tbps (float): its memory bandwidth, TB/s.
        autocast_dtype (torch.dtype, optional): run under the CPU's autocast in this dtype.

    Returns:
        WorkCounter: the recorded step (:func:`roofline` sums it).

    Raises:
        ValueError: the step reads values of what the network computed (a Hungarian matcher,
            a range check of the teacher's labels): fake tensors hold none.
    """
    if not isinstance(batch, list) or not all(isinstance(d, dict) for d in batch):
        raise TypeError(f"batch: a list of dicts (detectron2's inputs), got {type(batch).__name__}")
    counter = WorkCounter(peak_tflops * 1e12, bandwidth_tbps * 1e12)
    amp = (
        torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    text = _text_towers(model)
    with mode:  # fake copies keep requires_grad; tied weights stay tied
        state = {
            name: mode.from_tensor(t)
            for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
            if id(t) not in text
        }
    model.train()
    try:
        with mode, counter:
            for recording in (False, True):
                counter.recording = recording
                with amp, torch.autograd.set_detect_anomaly(True, check_nan=False):
                    losses = functional_call(model, state, (batch,), tie_weights=True)
                    loss = sum(losses.values())
                loss.backward()
                for t in state.values():
                    t.grad = None
    except (DataDependentOutputException, DynamicOutputShapeException, RuntimeError) as e:
        if not isinstance(e, _FAKE_ERRORS) and "tensor subclass" not in str(e):
            raise
        raise ValueError(
            f"{type(model).__name__}'s step reads the values of what its network computed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; at "
            f"{_raised_at(e)}): a fake tensor has none. The roofline counts steps whose work "
            "follows from the shapes and the inputs; time this one with "
            "`tools/benchmark.py train` on the device"
        ) from e
    return counter


def _text_towers(model: torch.nn.Module) -> set:
    """The ids of the CLIP teachers' tensors outside their image towers (the text tower),
    which stay real: the text embeddings are computed once per vocabulary and cached (in
    memory and on disk, under the weights' fingerprint, computed here first), outside the
    steady-state step."""
    from ..clip.teacher import CLIPTeacher

    ids = set()
    for teacher in (m for m in model.modules() if isinstance(m, CLIPTeacher)):
        teacher.fingerprint  # noqa: B018 (a digest of the real weights, cached)
        named = itertools.chain(teacher.model.named_parameters(), teacher.model.named_buffers())
        ids.update(id(t) for n, t in named if not n.startswith("visual."))
    return ids


def _raised_at(error: BaseException) -> str:
    """The innermost ovseg or open_clip line of the traceback, else the innermost line
    outside torch and this module."""
    frames = traceback.extract_tb(error.__traceback__)
    site = _model_site((f.filename, f.lineno or 0) for f in reversed(frames))
    if site is not None:
        return site
    torch_dir = os.path.dirname(torch.__file__)
    outside = [
        f
        for f in frames
        if not os.path.abspath(f.filename).startswith(torch_dir) and f.filename != __file__
    ]
    return f"{outside[-1].filename}:{outside[-1].lineno}" if outside else "?"


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


def benchmark_roofline(
    cfg,
    *,
    device_name: str = "NVIDIA H200",
    peak_tflops: Optional[float] = None,
    bandwidth_tbps: Optional[float] = None,
    frozen=(),
    top: int = 30,
) -> Dict[str, Any]:
    """:func:`roofline` of a training config's step on one synthetic batch of its crop size,
    counted on the CPU for a named device (the model built as ovseg's Trainer builds it).

    Args:
        cfg (CfgNode): from :func:`ovseg.benchmark.training_config` (MODEL.DEVICE "cpu").
        device_name (str): the device whose roofline to use, e.g. "NVIDIA H100 80GB HBM3".
        peak_tflops, bandwidth_tbps (float, optional): override the tables.
        frozen: submodules frozen after the build (``freeze_modules``).
        top (int): source lines kept in "sites", the costliest.

    Returns:
        dict: :func:`roofline`'s, with the model, batch, input side, precision and device.
    """
    from detectron2.utils.events import EventStorage

    from ..engine import Trainer
    from ..engine.train_loop import _DTYPES
    from .train import _synthetic, freeze_modules

    if cfg.MODEL.DEVICE != "cpu":
        raise ValueError(f"the roofline is counted on the CPU; got MODEL.DEVICE={cfg.MODEL.DEVICE}")

    amp = cfg.SOLVER.AMP
    precision = amp.DTYPE if amp.ENABLED else "fp32"
    if precision not in ("fp32", *_DTYPES):
        raise ValueError(f"SOLVER.AMP.DTYPE={amp.DTYPE!r}; supported: {sorted(_DTYPES)}")
    dtype = _DTYPES.get(precision)  # CPU autocast takes fp16 too, here (nothing is computed)
    peak, bandwidth = peak_for(device_name, precision, peak_tflops, bandwidth_tbps)
    model = Trainer.build_model(cfg)
    freeze_modules(model, frozen)
    batch, side = _synthetic(cfg, model)
    with EventStorage(0):  # as a trainer's step (self-training reads the iteration)
        counter = count_step_work(
            model, batch, peak_tflops=peak, bandwidth_tbps=bandwidth, autocast_dtype=dtype
        )
    res = roofline(counter)
    res["sites"] = res["sites"][:top]
    return {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE, "batch": len(batch), "side": side,
        "precision": precision, "device_name": device_name, "peak_tflops": peak,
        "bandwidth_tbps": bandwidth, "torch": torch.__version__, **res,
    }  # fmt: skip
