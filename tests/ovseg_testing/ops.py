"""The aten operators a call dispatches, by name, in order: what a change of formulation
adds or removes (a copy, a batched product, a read of the device) can be asserted on."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpNames(TorchDispatchMode):
    """Records ``names``: each dispatched operator's name (``aten.add_.Tensor`` -> "add_").

    Args:
        device (str): record only the operators whose first tensor argument is on this
            device type (e.g. "meta", standing for a GPU in a test); None records every one.
    """

    def __init__(self, device: Optional[str] = None):
        super().__init__()
        self.device = device
        self.names: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if self.device is None or (tensors and tensors[0].device.type == self.device):
            self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))
