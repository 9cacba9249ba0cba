"""Copies from the host to the model's device that do not make the host wait.

A plain ``tensor.to("cuda")`` from pageable memory synchronises the host with the device:
each of a batch's per-image targets copied that way is a wait (FreeSeg: two per image, XPM:
four). Through pinned memory with ``non_blocking=True`` the copy is queued on the stream like
a kernel; torch's pinned-memory allocator keeps the staging block until the copy is done.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, Sequence, TypeVar, Union

import torch
from torch import Tensor

from detectron2.structures import BitMasks, Boxes, Instances

__all__ = ["batch_index", "device_memo", "instances_to_device", "tensor_to_device"]

T = TypeVar("T")


def tensor_to_device(x: Tensor, device: torch.device) -> Tensor:
    """``x`` on ``device``; from the CPU to CUDA through pinned memory without waiting."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _field_to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return tensor_to_device(value, device)
    if isinstance(value, (BitMasks, Boxes)):  # a tensor in a wrapper: the same type around it
        return type(value)(tensor_to_device(value.tensor, device))
    return value.to(device) if hasattr(value, "to") else value  # polygons, lists


def instances_to_device(inst: Instances, device: torch.device) -> Instances:
    """``Instances.to(device)``, its tensors (bare, or in BitMasks and Boxes) copied through
    pinned memory without waiting."""
    out = Instances(inst.image_size)
    for name, value in inst.get_fields().items():
        out.set(name, _field_to_device(value, device))
    return out


def batch_index(idx: Sequence[int], batch: int, device: torch.device) -> Union[type(...), Tensor]:
    """An index of the samples ``idx`` of a ``batch`` that selects from device tensors
    without a copy from pageable memory (``tensor[list]`` builds its index on the host and
    copies it, a wait per use): the whole batch in order as ``...`` (the one-vocabulary
    batch: an alias, whose backward passes the gradient on as it is, where ``[:]``'s pads it
    into a new tensor of zeros), else the indices copied once through pinned memory."""
    if list(idx) == list(range(batch)):
        return ...
    return tensor_to_device(torch.tensor(list(idx), dtype=torch.long), device)


def device_memo(cache: Dict, key: Hashable, make: Callable[[], T], limit: int = 0) -> T:
    """``make()`` once per ``key``, kept in ``cache`` (e.g. a dict in a module's ``__dict__``:
    not a buffer, so never in a checkpoint): the device tensors a step would otherwise build
    from host data, a copy from pageable memory and a wait, at every call.

    Made outside inference mode: a tensor first made during an evaluation or a timing
    (``torch.inference_mode``) would be an inference tensor, which autograd refuses to save
    for backward when training goes on. ``limit``: entries kept before the memo is emptied
    (0: no bound; e.g. evaluation's many image sizes)."""
    if key not in cache:
        if limit and len(cache) >= limit:
            cache.clear()
        with torch.inference_mode(False):
            cache[key] = make()
    return cache[key]
