"""A config's training step or test forward counted on fake weights on the CPU, for
``tools/benchmark.py roofline`` (the counter and its sums: ``roofline.py``).

The model's parameters and buffers become fake tensors (torch's ``FakeTensorMode``: shapes,
dtypes and strides, no data) and the model runs on them through ``torch.func.functional_call``,
once to fill its caches and once recorded, so the recorded run is a steady-state one.
Whatever the network computes is fake; what reads only the inputs (the host's label check,
the targets made from the labels, the padding's content mask, the sliding-window count map)
runs for real, as the host does it. The CLIP teachers' text towers stay real: their
embeddings are cached once per vocabulary (in memory and on disk), and fake ones must never
reach that cache.

A run that reads values of what its network computed (a Hungarian matcher, an RPN's
proposals) cannot be counted so: it is refused with the source line that asked.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
)
from torch.func import functional_call

from .roofline import _FAKE_ERRORS, WorkCounter, _model_site, peak_for, roofline

__all__ = ["benchmark_roofline", "count_inference_work", "count_step_work"]


def _check_inputs(batch: Any) -> None:
    if not isinstance(batch, list) or not all(isinstance(d, dict) for d in batch):
        raise TypeError(f"batch: a list of dicts (detectron2's inputs), got {type(batch).__name__}")


def _autocast(dtype: Optional[torch.dtype]):
    return torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()


def _counted(
    model: torch.nn.Module, run: Callable[[Dict[str, torch.Tensor]], None], what: str, counter
) -> WorkCounter:
    """``run(state)`` twice on fake copies of ``model``'s weights (but its text towers'), the
    second time recorded by ``counter``; a read of the network's values refused."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    text = _text_towers(model)
    with mode:  # fake copies keep requires_grad; tied weights stay tied
        state = {
            name: mode.from_tensor(t)
            for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
            if id(t) not in text
        }
    try:
        with mode, counter:
            for recording in (False, True):
                counter.recording = recording
                run(state)
    except (DataDependentOutputException, DynamicOutputShapeException, RuntimeError) as e:
        if not isinstance(e, _FAKE_ERRORS) and "tensor subclass" not in str(e):
            raise
        raise ValueError(
            f"{type(model).__name__}'s {what} reads the values of what its network computed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; at "
            f"{_raised_at(e)}): a fake tensor has none. The roofline counts runs whose work "
            "follows from the shapes and the inputs; time this one with "
            f"`tools/benchmark.py {'train' if what == 'step' else 'infer'}` on the device"
        ) from e
    return counter


def count_step_work(
    model: torch.nn.Module,
    batch: Any,
    *,
    peak_tflops: float,
    bandwidth_tbps: float,
    autocast_dtype: Optional[torch.dtype] = None,
) -> WorkCounter:
    """One warm-up and one recorded training forward and backward (the sum of the model's
    losses, as detectron2's step) of ``model`` on ``batch`` with fake weights.

    The model's own parameters and buffers are not touched, but other caches the step fills
    (memoised tensors) may hold fake tensors afterwards, so build the model for this alone.

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
    _check_inputs(batch)

    def step(state):
        with _autocast(autocast_dtype), torch.autograd.set_detect_anomaly(True, check_nan=False):
            losses = functional_call(model, state, (batch,), tie_weights=True)
            loss = sum(losses.values())
        loss.backward()
        for t in state.values():
            t.grad = None

    model.train()
    return _counted(model, step, "step", WorkCounter(peak_tflops * 1e12, bandwidth_tbps * 1e12))


def count_inference_work(
    model: torch.nn.Module,
    inputs: Any,
    *,
    peak_tflops: float,
    bandwidth_tbps: float,
    autocast_dtype: Optional[torch.dtype] = None,
) -> WorkCounter:
    """One warm-up and one recorded test forward of ``model`` (eval mode, without grad as
    detectron2's evaluation runs it: normalisation, whole or sliding-window inference, the
    resize to the original size) on ``inputs`` with fake weights; as :func:`count_step_work`.

    Args:
        model (nn.Module): a built model on the CPU, its inference mode set.
        inputs (list[dict]): its test inputs ("image", "height", "width"), real tensors.
        peak_tflops, bandwidth_tbps, autocast_dtype: as :func:`count_step_work`'s.

    Returns:
        WorkCounter: the recorded forward.
    """
    _check_inputs(inputs)

    def forward(state):
        with torch.no_grad(), _autocast(autocast_dtype):
            functional_call(model, state, (inputs,), tie_weights=True)

    model.eval()
    counter = WorkCounter(peak_tflops * 1e12, bandwidth_tbps * 1e12)
    # torch's fused inference attention (``_native_multi_head_attention``, taken without grad
    # and autocast) is one operator to the counter, of no FLOPs: switched off, ovseg's
    # token-major attention (ovseg/clip/attention.py) runs in its place, the same products
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return _counted(model, forward, "test forward", counter)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)


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
    outside torch and the benchmark's modules."""
    frames = traceback.extract_tb(error.__traceback__)
    site = _model_site((f.filename, f.lineno or 0) for f in reversed(frames))
    if site is not None:
        return site
    torch_dir = os.path.dirname(torch.__file__)
    here = os.path.dirname(os.path.abspath(__file__))
    outside = [
        f for f in frames if not os.path.abspath(f.filename).startswith((torch_dir, here + os.sep))
    ]
    return f"{outside[-1].filename}:{outside[-1].lineno}" if outside else "?"


def _test_inputs(cfg, model, images: int, size: Optional[Sequence[int]]) -> Tuple[List[dict], Any]:
    from .infer import _inputs, _no_mode, inference_size

    mode = cfg.TEST.INFERENCE_MODE
    why = _no_mode(model, mode)
    if why:
        raise ValueError(f"--infer {mode}: {why}; count it with --infer whole")
    model.inference_mode = mode
    size = tuple(size) if size else inference_size(cfg)
    return _inputs(images, size), list(size)


def benchmark_roofline(
    cfg,
    *,
    device_name: str = "NVIDIA H200",
    peak_tflops: Optional[float] = None,
    bandwidth_tbps: Optional[float] = None,
    frozen=(),
    top: int = 30,
    infer: bool = False,
    images: int = 1,
    image_size: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """:func:`roofline` of a config's training step on one synthetic batch of its crop size,
    or with ``infer`` of its test forward (TEST.INFERENCE_MODE) on ``images`` synthetic images
    of its test size, counted on the CPU for a named device (the model built as ovseg's
    Trainer builds it).

    Args:
        cfg (CfgNode): from :func:`ovseg.benchmark.training_config` (MODEL.DEVICE "cpu").
        device_name (str): the device whose roofline to use, e.g. "NVIDIA H100 80GB HBM3".
        peak_tflops, bandwidth_tbps (float, optional): override the tables.
        frozen: submodules frozen after the build (``freeze_modules``).
        top (int): source lines kept in "sites", the costliest.
        infer (bool): count the test forward, not the training step.
        images (int): with ``infer``, images per forward.
        image_size ((int, int), optional): with ``infer``, (height, width); default the
            config's test short side at 4:3 (:func:`ovseg.benchmark.infer.inference_size`).

    Returns:
        dict: :func:`roofline`'s, with the model, what was counted ("step", or the inference
        mode), batch, input side or size, precision and device.
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
    work = dict(peak_tflops=peak, bandwidth_tbps=bandwidth, autocast_dtype=dtype)
    if infer:
        batch, side = _test_inputs(cfg, model, images, image_size)
        counter = count_inference_work(model, batch, **work)
    else:
        batch, side = _synthetic(cfg, model)
        with EventStorage(0):  # as a trainer's step (self-training reads the iteration)
            counter = count_step_work(model, batch, **work)
    res = roofline(counter)
    res["sites"] = res["sites"][:top]
    return {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "counted": cfg.TEST.INFERENCE_MODE if infer else "step", "batch": len(batch),
        "side": side, "precision": precision, "device_name": device_name, "peak_tflops": peak,
        "bandwidth_tbps": bandwidth, "torch": torch.__version__, **res,
    }  # fmt: skip
