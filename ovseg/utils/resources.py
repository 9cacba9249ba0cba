"""Running out of memory, said in one line: what ran out, what to lower and what is kept.

torch reports a DataLoader worker that the kernel's out-of-memory killer ended as
``DataLoader worker (pid X) is killed by signal: Killed.``, raised from its SIGCHLD handler
wherever the main process happens to be (often inside the forward), and an allocation that
fails as ``MemoryError``, ``torch.OutOfMemoryError`` (CUDA) or a ``RuntimeError`` naming
``DefaultCPUAllocator``: each ended a run in two tracebacks that named no setting to change.
:func:`naming_resources` turns them into :class:`OutOfResourcesError`, whose message names the
settings that lower memory for the job at hand and what of its work is kept; given the model,
only those that act on it (no CLIP key for a model without a CLIP teacher, no sliding window
for a student that tests whole images only).
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Optional

__all__ = [
    "OutOfResourcesError",
    "MemoryKnobs",
    "is_out_of_memory",
    "memory_knobs",
    "names_a_dead_worker",
    "naming_resources",
    "out_of_resources",
    "worker_death",
]

_WORKER = re.compile(
    r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) (is killed by signal: \w+|exited unexpectedly)"
)
# allocation failures torch raises as plain RuntimeErrors (its CPU allocator, older CUDA)
_OOM_TEXT = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory", "out of memory")


class OutOfResourcesError(RuntimeError):
    """A job ran out of memory, or one of its DataLoader workers was killed (most likely by
    the out-of-memory killer). The message says which, what to lower and what is kept."""


class MemoryKnobs(NamedTuple):
    """Which of the optional memory settings act on a model (:func:`memory_knobs`)."""

    slide: bool = True  # TEST.INFERENCE_MODE slide / TEST.SLIDE_WINDOW
    precision: bool = True  # MODEL.CLIP.PRECISION: the model has a CLIP teacher
    frozen: bool = True  # MODEL.CLIP.FROZEN_DTYPE: a CLIP image tower with nothing training


ALL_KNOBS = MemoryKnobs()


def memory_knobs(model=None) -> MemoryKnobs:
    """The optional memory settings that act on ``model`` (all of them without a model).

    A setting a model does not read is no advice: detectron2's SemanticSegmentor has no CLIP,
    FreeSeg and XPM test whole images only (the config check refuses slide for some), and
    MODEL.CLIP.FROZEN_DTYPE refuses a tower whose weights train.
    """
    if model is None:
        return ALL_KNOBS
    from ..clip import CLIPTeacher
    from ..modeling.meta_arch.base import OpenVocabSegmentor

    net = getattr(model, "module", model)  # DistributedDataParallel's wrapped model
    teachers = [m for m in net.modules() if isinstance(m, CLIPTeacher)]
    frozen = any(not any(p.requires_grad for p in t.model.visual.parameters()) for t in teachers)
    slides = isinstance(net, OpenVocabSegmentor) and not net.own_test_path()
    return MemoryKnobs(slide=slides, precision=bool(teachers), frozen=frozen)


def _either(options) -> str:
    """``options`` joined as "a, b or c"."""
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def _memory_settings(cfg, job: str, knobs: MemoryKnobs = ALL_KNOBS) -> str:
    """The settings that lower ``job``'s memory on a model with ``knobs``, with their values
    in ``cfg``; a switch already at its lower-memory value is not named."""
    solver, test, clip = cfg.SOLVER, cfg.TEST, cfg.MODEL.CLIP
    frozen = [f"MODEL.CLIP.FROZEN_DTYPE bfloat16 (now {clip.FROZEN_DTYPE or 'fp32'!r})"]
    frozen = frozen if knobs.frozen and clip.FROZEN_DTYPE != "bfloat16" else []
    if job == "training":
        crop = (
            f"INPUT.CROP.SIZE {tuple(cfg.INPUT.CROP.SIZE)}"
            if cfg.INPUT.CROP.ENABLED
            else (f"INPUT.MAX_SIZE_TRAIN ({cfg.INPUT.MAX_SIZE_TRAIN})")
        )
        return _either([
            f"lower SOLVER.IMS_PER_BATCH ({solver.IMS_PER_BATCH}) or raise "
            f"SOLVER.ACCUMULATE_STEPS ({solver.ACCUMULATE_STEPS}: the same step in smaller "
            f"forwards)", f"a smaller {crop}",
            *([] if solver.AMP.ENABLED else ["SOLVER.AMP.ENABLED True (now False)"]), *frozen,
        ])  # fmt: skip
    window = f"TEST.SLIDE_WINDOW {tuple(test.SLIDE_WINDOW)}"
    size = []
    if knobs.slide:
        slide = test.INFERENCE_MODE == "slide"
        size = [
            f"a smaller {window}" if slide else f"TEST.INFERENCE_MODE slide with a small {window}"
        ]
        if slide and test.SLIDE_WINDOWS_PER_FORWARD > 1:  # each window's scores held at once
            size.append(f"TEST.SLIDE_WINDOWS_PER_FORWARD 1 (now {test.SLIDE_WINDOWS_PER_FORWARD})")
    precision = []
    if knobs.precision and clip.PRECISION == "fp32":  # bf16 or fp16 already halve it
        precision = [f"MODEL.CLIP.PRECISION bf16 (now {clip.PRECISION!r})"]
    return _either([
        f"lower INPUT.MIN_SIZE_TEST ({cfg.INPUT.MIN_SIZE_TEST}) or INPUT.MAX_SIZE_TEST "
        f"({cfg.INPUT.MAX_SIZE_TEST})", *(f"use {s}" for s in size), *precision, *frozen,
    ])  # fmt: skip


def out_of_resources(
    error: BaseException, cfg, job: str, kept: str = "", knobs: MemoryKnobs = ALL_KNOBS
) -> Optional[OutOfResourcesError]:
    """``error`` as an :class:`OutOfResourcesError`, or None when it is no lack of memory.

    Args:
        error: what the job raised.
        cfg (CfgNode): the job's config, for the settings to lower and their values.
        job (str): "training", "evaluation" or "pseudo-labelling", as the message names it.
        kept (str): what of the job's work is kept, e.g. "the run's last checkpoint
            output/model_0000999.pth is kept: --resume continues from it".
        knobs (MemoryKnobs): the optional settings that act on the job's model
            (:func:`memory_knobs`).
    """
    if isinstance(error, OutOfResourcesError):
        return error
    text = str(error)
    worker = _WORKER.search(text) if isinstance(error, RuntimeError) else None
    if worker is not None:
        what = (
            f"{job} stopped: a DataLoader worker (pid {worker.group(1).strip()}) "
            f"{worker.group(2).replace('is killed', 'was killed')}, most likely by the "
            "out-of-memory killer: lower DATALOADER.NUM_WORKERS "
            f"({cfg.DATALOADER.NUM_WORKERS}; each worker holds its own copy of the data), "
            f"or {_memory_settings(cfg, job, knobs)}"
        )
    elif isinstance(error, MemoryError) or _is_torch_oom(error, text):
        first = text.strip().splitlines()[0][:200] if text.strip() else ""
        name = f"{type(error).__name__}: {first}" if first else type(error).__name__
        what = f"{job} ran out of memory ({name}): {_memory_settings(cfg, job, knobs)}"
    else:
        return None
    return OutOfResourcesError(f"{what}. {kept}" if kept else f"{what}.")


def is_out_of_memory(error: Optional[BaseException]) -> bool:
    """Whether ``error`` is a lack of memory :func:`out_of_resources` reports."""
    if isinstance(error, (OutOfResourcesError, MemoryError)):
        return True
    text = str(error) if isinstance(error, RuntimeError) else ""
    return bool(_WORKER.search(text)) or _is_torch_oom(error, text)


def names_a_dead_worker(error: Optional[BaseException]) -> bool:
    """Whether ``error`` is torch's report of a DataLoader worker that died (its traceback,
    from torch's SIGCHLD handler, shows only where the main process happened to be)."""
    return isinstance(error, RuntimeError) and bool(_WORKER.search(str(error)))


def _is_torch_oom(error: Optional[BaseException], text: str) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if isinstance(error, oom):
        return True
    return isinstance(error, RuntimeError) and any(t in text for t in _OOM_TEXT)


def worker_death(error: BaseException) -> Optional[RuntimeError]:
    """torch's error for a DataLoader worker that died, or None when all are alive.

    Reading from a worker the kernel killed may fail first as a reset connection or an
    ``EOFError``, before torch's SIGCHLD handler names the worker: such an error waits up to
    a second for the worker's exit to show.
    """
    import torch

    check = getattr(torch._C, "_error_if_any_worker_fails", None)
    tries = 20 if isinstance(error, (ConnectionError, EOFError)) else 1
    for _ in range(tries if check is not None else 0):
        try:
            check()
        except RuntimeError as dead:
            return dead
        time.sleep(0.05)
    return None


@contextmanager
def naming_resources(
    cfg, job: str, kept: Callable[[], str] = lambda: "", model=None
) -> Iterator[None]:
    """Run a job's body; a lack of memory it raises becomes an :class:`OutOfResourcesError`
    (raised from the original, so log files may still show the full traceback).

    Args:
        cfg (CfgNode): the job's config.
        job (str): the job's name in the message ("training", "evaluation", ...).
        kept: called on failure: what of the job's work is kept (see :func:`out_of_resources`).
        model (nn.Module, optional): the job's model: only the settings acting on it are named.
    """
    try:
        yield
    except Exception as e:
        cause = e if is_out_of_memory(e) else worker_death(e)
        if cause is None or isinstance(e, OutOfResourcesError):
            raise
        raise out_of_resources(cause, cfg, job, kept(), memory_knobs(model)) from e
