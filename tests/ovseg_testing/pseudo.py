"""Pseudo-label test doubles: a store with a plausible manifest and a fake teacher."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from ovseg.pseudo import PseudoLabelStore

NAMES5 = ["cat", "dog", "grass", "sky", "road"]


def make_store(root: Path, names=NAMES5, threshold: float = 0.0, **manifest) -> PseudoLabelStore:
    """A new (or resumed) store over ``names``; keyword arguments add or replace manifest
    fields (``dataset``, ``command``, ``unseen``...)."""
    fields = {
        "fingerprint": "f" * 64,
        "teacher": {"clip": "c" * 64, "settings": {"method": "Fake", "templates": "single"}},
        "vocabulary": list(names),
        "unseen": [],
        "threshold": threshold,
        "dataset": "fake_train",
        **manifest,
    }
    return PseudoLabelStore.create(str(root), fields)


class FakeTeacher(nn.Module):
    """Logits = a fixed linear map of each pixel's colour; records which images it saw.

    Args:
        num_classes (int): K.
        fail_after (int, optional): raise after this many images (a killed run).
        scale (float): multiplies the logits (large: confident, small: unsure).
    """

    def __init__(self, num_classes: int = 5, fail_after: Optional[int] = None, scale=0.05):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(num_classes, 3, generator=g) * scale)
        self.fail_after = fail_after
        self.seen: List[str] = []

    def forward(self, batched_inputs):
        if self.training:
            raise RuntimeError("FakeTeacher must run in eval mode")
        out = []
        for inp in batched_inputs:
            if self.fail_after is not None and len(self.seen) >= self.fail_after:
                raise KeyboardInterrupt("simulated kill")
            self.seen.append(inp["file_name"])
            image = inp["image"].float() - 128.0
            scores = torch.einsum("kc,chw->khw", self.weight, image)
            assert scores.shape[-2:] == (inp["height"], inp["width"])
            out.append({"sem_seg": scores})
        return out
