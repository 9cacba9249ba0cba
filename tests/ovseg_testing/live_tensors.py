"""The peak of the bytes held by live tensors during a call, counted through a dispatch mode:
every tensor an aten op returns (views included) is tracked with a weak reference, and a
storage counts while any tracked tensor on it is alive. No timing and no allocator state."""

from __future__ import annotations

import weakref
from typing import Callable, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorPeak(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.refs: dict = {}  # storage key -> live tracked tensors on it
        self.sizes: dict = {}
        self.live = 0
        self.peak = 0

    def _drop(self, key) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= self.sizes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            (a.untyped_storage().data_ptr(), a.untyped_storage().nbytes())
            for a in tree_flatten((args, kwargs))[0]
            if isinstance(a, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = (storage.data_ptr(), storage.nbytes())
                if key in inputs and key not in self.refs:
                    continue  # a view of (or in place on) memory from before the call
                if key not in self.refs:
                    self.refs[key] = 0
                    self.sizes[key] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                self.refs[key] += 1
                weakref.finalize(t, self._drop, key)
        return out


def live_peak(fn: Callable, *args, **kwargs) -> Tuple[object, int]:
    """``fn(*args, **kwargs)`` and the peak bytes of the tensors created during it that were
    alive at one time."""
    with LiveTensorPeak() as mode:
        result = fn(*args, **kwargs)
    return result, mode.peak
