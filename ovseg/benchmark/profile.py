"""A training step under ``torch.profiler``: the top kernels by device time, host syncs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from detectron2.config import CfgNode
from detectron2.utils.events import EventStorage

from ..utils.io import atomic_write_json, atomic_write_text
from .syncs import HostSyncCounter, count_cuda_syncs
from .timing import synchronize

__all__ = ["profile_training"]


def _per_step_text(per_step: Dict[str, float]) -> str:
    return (f"{per_step['wall_ms_per_step']:.1f} ms of wall time and "
            f"{per_step['device_ms_per_step']:.1f} ms of device time per step")  # fmt: skip


def _device_us(prof) -> float:
    """The device events' self time (kernels, copies, memsets), as torch's table totals it:
    an operator's own "self device time" is its kernels' again, so operators are left out."""
    return sum(
        e.self_device_time_total
        for e in prof.key_averages()
        if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)
    )


def _events(prof, device: str, top: int) -> List[Dict[str, Any]]:
    rows = []
    for e in prof.key_averages():
        dev = getattr(e, "self_device_time_total", None)
        if dev is None:
            dev = getattr(e, "self_cuda_time_total", 0)
        rows.append(
            {"name": e.key, "count": e.count, "self_device_us": float(dev),
             "self_cpu_us": float(e.self_cpu_time_total)}
        )  # fmt: skip
    key = "self_device_us" if device == "cuda" else "self_cpu_us"
    rows.sort(key=lambda r: r[key], reverse=True)
    return rows[:top]


def profile_training(
    cfg: CfgNode, out_dir: Path, *, steps: int = 3, warmup: int = 3, top: int = 15
) -> Dict[str, Any]:
    """Profile ``steps`` synthetic training steps of ``cfg`` after ``warmup``.

    Writes ``profile.txt`` (torch's table, top rows by self device time, CPU time off
    CUDA) and ``profile.json`` (the same rows and the host syncs) into ``out_dir``.

    Returns:
        dict: "top" (rows: name, count, self device/CPU microseconds over all steps),
        "wall_ms_per_step" and "device_ms_per_step" (the device events' self time: kernels,
        copies, memsets; 0 off CUDA; both under the profiler), "host_syncs_per_step", "steps".
    """
    from .train import _build

    device = torch.device(cfg.MODEL.DEVICE)
    model, trainer, _, _ = _build(cfg, "synthetic")
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with EventStorage(0) as storage:
        for i in range(warmup):
            storage.iter = i
            trainer.run_step()
        synchronize(device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for i in range(steps):
                storage.iter = 1000 + i  # not a metrics read-back step
                trainer.run_step()
            synchronize(device)
            wall_s = time.perf_counter() - start
        storage.iter = 2000
        if device.type == "cuda":
            syncs = count_cuda_syncs(trainer.run_step)
        else:
            with HostSyncCounter() as counter:
                trainer.run_step()
            syncs = {"dispatch": counter.total, **counter.counts}
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=top)
    top_rows = _events(prof, device.type, top)
    # the device's busy time per step against the wall's, both under the profiler: a step
    # bound by its host waits between
    per_step = {"wall_ms_per_step": 1e3 * wall_s / steps,
                "device_ms_per_step": _device_us(prof) / 1e3 / steps}  # fmt: skip
    out_dir = Path(out_dir)
    atomic_write_text(
        out_dir / "profile.txt",
        f"{cfg.MODEL.META_ARCHITECTURE}, {steps} steps, {_per_step_text(per_step)}, host syncs "
        f"per step: {syncs}\n{table}",
    )
    res = {"steps": steps, "top": top_rows, **per_step, "host_syncs_per_step": syncs}
    atomic_write_json(out_dir / "profile.json", res)
    return res
