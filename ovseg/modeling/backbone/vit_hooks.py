# Follows DPT's readout handling (isl-org/lang-seg modules/models/lseg_vit.py), re-written.
"""Shared parts of the ViT feature backbones: hook layers, readout token, maps out."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

__all__ = ["READOUTS", "Readout", "ViTFeatureBackbone", "default_out_indices"]

# how the class (readout) token enters the patch maps, as DPT: dropped, added, or
# concatenated to every patch token and projected back (Linear(2C, C) + GELU)
READOUTS = ("ignore", "add", "project")


def default_out_indices(num_layers: int) -> Tuple[int, int, int, int]:
    """Four evenly spaced block indices ending at the last block.

    12 blocks give (2, 5, 8, 11) and 24 give (5, 11, 17, 23), the hooks of DPT and LSeg;
    towers with fewer than 4 blocks repeat a block.
    """
    if num_layers < 1:
        raise ValueError(f"a ViT needs at least one block, got {num_layers}")
    return tuple(max((i + 1) * num_layers // 4 - 1, 0) for i in range(4))


def check_out_indices(out_indices: Sequence[int], num_layers: int) -> Tuple[int, ...]:
    """Validate hook indices (0-based, ascending, < num_layers); [] = the default four."""
    if not out_indices:
        return default_out_indices(num_layers)
    idx = tuple(int(i) for i in out_indices)
    if any(i < 0 or i >= num_layers for i in idx) or list(idx) != sorted(idx):
        raise ValueError(
            f"MODEL.VIT_BACKBONE.OUT_INDICES={list(out_indices)}: block indices must be "
            f"ascending and in [0, {num_layers - 1}] for this {num_layers}-block ViT"
        )
    return idx


class Readout(nn.Module):
    """Turn (B, P + N, C) tokens (P prefix tokens first) into (B, N, C) patch tokens."""

    def __init__(self, mode: str, width: int, num_prefix: int = 1):
        """
        Args:
            mode (str): one of :data:`READOUTS`.
            width (int): token width C.
            num_prefix (int): prefix tokens before the patches; the first is the readout.
        """
        super().__init__()
        if mode not in READOUTS:
            raise ValueError(f"readout {mode!r} (MODEL.VIT_BACKBONE.READOUT) is not in {READOUTS}")
        self.mode = mode
        self.num_prefix = int(num_prefix)
        if mode == "project":
            self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, tokens: Tensor) -> Tensor:
        patches = tokens[:, self.num_prefix :]
        if self.mode == "ignore":
            return patches
        readout = tokens[:, :1].expand_as(patches)
        if self.mode == "add":
            return patches + readout
        return self.project(torch.cat([patches, readout], dim=-1))


class ViTFeatureBackbone(Backbone):
    """A plain ViT as a detectron2 Backbone: the tokens of hooked blocks as feature maps.

    Subclasses implement :meth:`tokens` (the hooked blocks' tokens); this class pads the
    input to the patch size, applies the readout and reshapes to (B, C, h, w) maps named
    ``out_features`` (default ``res2``..``res5``, so decoders written for ResNets read them),
    all at stride = patch size.
    """

    def __init__(
        self,
        *,
        width: int,
        patch_size: int,
        out_indices: Sequence[int],
        readout: str = "project",
        num_prefix: int = 1,
        out_features: Optional[Sequence[str]] = None,
        pixel_mean: Optional[Sequence[float]] = None,
        pixel_std: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        self.width = int(width)
        self.patch_size = int(patch_size)
        self.out_indices = tuple(int(i) for i in out_indices)
        if out_features is None:
            out_features = [f"res{i + 2}" for i in range(len(self.out_indices))]
        if len(out_features) != len(self.out_indices):
            raise ValueError(
                f"{len(out_features)} output names {list(out_features)} for "
                f"{len(self.out_indices)} hooked blocks {list(self.out_indices)}"
            )
        self._out_features = list(out_features)
        self.readouts = nn.ModuleList(
            Readout(readout, self.width, num_prefix) for _ in self.out_indices
        )
        # the pixel statistics the weights were trained with (0-255 scale), for the model
        # that feeds this backbone; plain lists so checkpoints do not carry them
        self.pixel_mean = [float(v) for v in pixel_mean] if pixel_mean is not None else None
        self.pixel_std = [float(v) for v in pixel_std] if pixel_std is not None else None

    @property
    def size_divisibility(self) -> int:
        return self.patch_size

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self.width, stride=self.patch_size)
            for name in self._out_features
        }

    def tokens(self, x: Tensor) -> List[Tensor]:
        """(B, P + h*w, C) tokens after each hooked block, for x (B, 3, p*h, p*w)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x (Tensor): (B, 3, H, W) normalised images; sides that are not multiples of the
                patch size are zero-padded at the bottom/right.

        Returns:
            dict[str, Tensor]: name -> (B, C, ceil(H / p), ceil(W / p)).
        """
        if x.dim() != 4:
            raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(x.shape)}")
        p = self.patch_size
        h, w = x.shape[-2:]
        x = nn.functional.pad(x, (0, -w % p, 0, -h % p))
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        outs = {}
        for name, readout, tok in zip(self._out_features, self.readouts, self.tokens(x)):
            patches = readout(tok)
            outs[name] = patches.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
        return outs
