"""SHA-256 over tensors' bytes, read in place: the one hashing of tensors ovseg has.

The CLIP teacher's identity (``ovseg.clip.cache.state_dict_sha256``) and the digests a
checkpoint records of its contents (``ovseg.engine.checkpoint_digest``) both feed tensors
through :func:`update_with_tensor`, which hands hashlib a view of a CPU tensor's memory
(no ``tobytes()`` copy: hashing 600 MB costs the hash, not a second 600 MB).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["update_with_tensor", "value_sha256"]

# leaves hashed by value; another object (a type torch.load would not even read back with
# weights_only) is hashed by its type name only, so no address in a repr can differ
_PLAIN = (bool, int, float, complex, str, bytes, type(None))


def update_with_tensor(h: Any, name: str, tensor: torch.Tensor) -> None:
    """Feed ``name|dtype|shape|`` and then the tensor's bytes into ``h``.

    Args:
        h: a hashlib object.
        name (str): the tensor's name (a state-dict key).
        tensor (Tensor): any dense tensor; a CPU contiguous one is read without a copy.
    """
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def value_sha256(value: Any, name: str = "") -> str:
    """SHA-256 hex of a nested structure of tensors, numpy arrays, dicts, lists and plain
    values (a checkpoint's entry), the same for the structure ``torch.save`` wrote and the one
    ``torch.load`` read back: dict keys in sorted order, lists and tuples alike."""
    h = hashlib.sha256()
    _update(h, name, value)
    return h.hexdigest()


def _update(h, name: str, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        update_with_tensor(h, name, value)
    elif isinstance(value, np.ndarray) and value.dtype != object:
        a = np.ascontiguousarray(value)
        h.update(f"{name}|np.{a.dtype.str}|{a.shape}|".encode())
        h.update(a.reshape(-1).view(np.uint8))
    elif isinstance(value, Mapping):
        h.update(f"{name}|map{len(value)}|".encode())
        for key in sorted(value, key=str):
            _update(h, f"{name}.{key}", value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"{name}|seq{len(value)}|".encode())
        for i, item in enumerate(value):
            _update(h, f"{name}[{i}]", item)
    elif isinstance(value, _PLAIN):
        h.update(f"{name}|{type(value).__name__}|{value!r}|".encode())
    else:
        h.update(f"{name}|{type(value).__name__}|".encode())
