"""Timing helpers shared by every benchmark: devices, clocks, medians, A/B ratios, peak memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

__all__ = [
    "CLOCKS",
    "MIN_TIMED_CALLS",
    "check_device",
    "default_device",
    "interleaved",
    "peak_memory",
    "synchronize",
    "time_calls",
]

# "process" counts this process's CPU time (all its threads): on a CPU shared with other jobs
# it measures the work, not the waiting
CLOCKS: Dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}

#: timed calls of each function that a time limit (``time_calls``) never cuts below
MIN_TIMED_CALLS = 3


def default_device() -> str:
    """``"cuda"`` when a CUDA device is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> torch.device:
    """Parse a benchmark's ``--device``, refusing what cannot run here.

    Args:
        device (str): ``"cpu"`` or ``"cuda[:N]"``.

    Returns:
        torch.device: the parsed device.
    """
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"--device {device!r} is neither 'cpu' nor 'cuda[:N]'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device} but CUDA is unavailable (torch {torch.__version__}); "
            "use --device cpu"
        )
    return torch.device(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA), so timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fns: Mapping[str, Callable[[], object]],
    device: torch.device,
    iters: int,
    warmup: int,
    clock: str = "wall",
    *,
    time_limit_s: Optional[float] = None,
    timed: Optional[Dict[str, int]] = None,
) -> Dict[str, float]:
    """Median seconds of one call of each function, after ``warmup`` untimed calls of each.

    The functions take turns within every iteration, so load from other processes on a
    shared machine spreads over all of them instead of biasing whichever runs last. Calls
    run under ``torch.inference_mode`` and CUDA is synchronised around each timed call.

    Args:
        fns: name -> function of no arguments.
        device (torch.device): where the functions queue their work.
        iters (int): timed calls of each function.
        warmup (int): untimed calls of each function first.
        clock (str): a key of :data:`CLOCKS`; ``"process"`` only on the CPU.
        time_limit_s (float, optional): stop timing after the iteration in which the timed
            calls passed this many wall seconds (from the first timed call), once
            :data:`MIN_TIMED_CALLS` of each are in: a slow function (a multi-scale protocol
            of a large model) gets fewer calls instead of overrunning a benchmark's budget.
        timed (dict, optional): filled with name -> timed calls made.

    Returns:
        dict: name -> median seconds per call.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock {clock!r} is not one of {sorted(CLOCKS)}")
    if clock == "process" and device.type == "cuda":
        raise ValueError("--clock process measures CPU time; use --clock wall on CUDA")
    now = CLOCKS[clock]
    times: Dict[str, List[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        began = time.perf_counter()
        for _ in range(warmup):  # under a limit: at least one, the one that warms up
            for fn in fns.values():
                fn()
            if time_limit_s is not None and time.perf_counter() - began > time_limit_s:
                break
        began = time.perf_counter()
        for i in range(iters):
            for name, fn in fns.items():
                synchronize(device)
                start = now()
                fn()
                synchronize(device)
                times[name].append(now() - start)
            spent = time.perf_counter() - began
            if time_limit_s is not None and i + 1 >= MIN_TIMED_CALLS and spent > time_limit_s:
                break
    if timed is not None:
        timed.update({name: len(t) for name, t in times.items()})
    return {name: statistics.median(t) for name, t in times.items()}


def interleaved(
    a: Callable[[], Any], b: Callable[[], Any], repeats: int, clock: str = "process"
) -> Dict[str, float]:
    """Median seconds of ``a`` and ``b`` called in turns ``repeats`` times each (after one
    untimed call of each), and ``b / a``."""
    now = CLOCKS[clock]
    a(), b()
    times: List[List[float]] = [[], []]
    for _ in range(repeats):
        for k, fn in enumerate((a, b)):
            start = now()
            fn()
            times[k].append(now() - start)
    ma, mb = statistics.median(times[0]), statistics.median(times[1])
    return {"a_s": ma, "b_s": mb, "b_over_a": mb / ma, "repeats": repeats, "clock": clock}


def peak_memory(device: torch.device) -> Tuple[float, str]:
    """Peak memory in GiB and what it measures.

    On CUDA: the allocator's peak since the last ``torch.cuda.reset_peak_memory_stats``; on
    the CPU: the process's peak resident set over its whole life.

    Returns:
        tuple: (GiB, a description of the measure).
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return rss / 2**30, "process peak RSS (ru_maxrss, whole run)"
