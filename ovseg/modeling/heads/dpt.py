# Follows DPT/LSeg's reassemble and fusion blocks (isl-org/lang-seg modules/models/
# lseg_blocks.py, lseg_vit.py), re-written for any detectron2 backbone.
"""DPT decoder: reassemble four feature maps to four scales, fuse them RefineNet-style.

Reassemble: each input gets a 1x1 projection, then is resampled from its stride to a
target stride (default 4, 8, 16, 32): a plain ViT's four same-stride maps (patch 16) are
upsampled 4x and 2x by transposed convolutions, kept, and downsampled 2x by a stride-2 3x3
convolution, as in DPT; a ResNet's res2..res5 are already at those strides and are only
projected. A 3x3 convolution then maps each to the common width. Fusion runs coarse to fine:
each block adds a residual-conv-unit-refined skip, refines again, upsamples (to the next
skip's size, so any input size works; 2x after the finest) and mixes with a 1x1 convolution.
A 1x1 head maps the result, at half the finest target stride, to the output channels.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm

from .build import DENSE_HEAD_REGISTRY

__all__ = ["DPTDecoder", "FeatureFusionBlock", "ResidualConvUnit", "resample_layer"]


def resample_layer(channels: int, in_stride: int, out_stride: int) -> nn.Module:
    """Change a map's stride by a power-of-two factor (DPT's reassemble resampling).

    Up by f: ConvTranspose2d(kernel f, stride f); down by f: Conv2d(3x3, stride f); equal
    strides: identity.
    """
    if in_stride == out_stride:
        return nn.Identity()
    ratio = in_stride / out_stride
    exact = max(ratio, 1 / ratio)
    factor = int(round(exact))
    if abs(factor - exact) > 1e-6 or factor & (factor - 1):
        raise ValueError(
            f"cannot resample from stride {in_stride} to {out_stride}: the ratio must be a "
            "power of two (check MODEL.DPT.REASSEMBLE_STRIDES against the backbone's strides)"
        )
    if ratio > 1:
        return nn.ConvTranspose2d(channels, channels, kernel_size=factor, stride=factor)
    return nn.Conv2d(channels, channels, kernel_size=3, stride=factor, padding=1)


class ResidualConvUnit(nn.Module):
    """x + conv(act(norm(conv(act(x))))): pre-activation residual unit of RefineNet/DPT."""

    def __init__(self, channels: int, norm: str = "BN"):
        super().__init__()
        use_norm = bool(norm)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=not use_norm)
        self.norm1 = get_norm(norm, channels) if use_norm else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not use_norm)
        self.norm2 = get_norm(norm, channels) if use_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm1(self.conv1(F.relu(x)))
        out = self.norm2(self.conv2(F.relu(out)))
        return x + out


class FeatureFusionBlock(nn.Module):
    """Fuse a coarser path with a skip, refine, upsample, mix (DPT's fusion block)."""

    def __init__(self, channels: int, norm: str = "BN", with_skip: bool = True):
        """
        Args:
            channels (int): width of both inputs and the output.
            norm (str): norm of the residual units.
            with_skip (bool): False for the coarsest block, which has no skip input (its
                skip unit would never get a gradient, which DDP rejects).
        """
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels, norm) if with_skip else None
        self.unit = ResidualConvUnit(channels, norm)
        self.out_conv = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(
        self, x: Tensor, skip: Optional[Tensor] = None, size: Optional[Tuple[int, int]] = None
    ) -> Tensor:
        """
        Args:
            x (Tensor): (B, C, h, w) the coarser path (or the coarsest map).
            skip (Tensor, optional): (B, C, h, w) the reassembled map of this scale.
            size ((int, int), optional): output size; default 2x the input.

        Returns:
            Tensor: (B, C, *size).
        """
        if skip is not None:
            if self.skip_unit is None:
                raise ValueError("this fusion block was built without a skip input")
            x = x + self.skip_unit(skip)
        x = self.unit(x)
        size = size or (2 * x.shape[-2], 2 * x.shape[-1])
        # align_corners=True as the official DPT/LSeg fusion blocks
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


@DENSE_HEAD_REGISTRY.register()
class DPTDecoder(nn.Module):
    """Four backbone maps -> one (B, out_channels, ~H/2, ~W/2) map (half the finest stride)."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: Sequence[str],
        out_channels: int,
        reassemble_channels: Sequence[int] = (96, 192, 384, 768),
        reassemble_strides: Sequence[int] = (4, 8, 16, 32),
        features: int = 256,
        norm: str = "BN",
    ):
        """
        Args:
            input_shape (dict[str, ShapeSpec]): the backbone's output shapes.
            in_features: four backbone outputs, finest target first.
            out_channels (int): channels of the 1x1 head (LSeg: the text dimension D).
            reassemble_channels: the 1x1 projection widths, one per input; empty = no
                reassemble (the backbone's strides must equal ``reassemble_strides``).
            reassemble_strides: the target stride of each input (powers of two apart).
            features (int): width of the fusion path.
            norm (str): detectron2 norm of the residual units ("BN", "GN", "SyncBN", ""
                for none; the official LSeg uses BN).
        """
        super().__init__()
        n = len(in_features)
        # no reassemble: each map enters its 3x3 conv as it is (official LSeg's ResNet)
        direct = len(reassemble_channels) == 0
        if direct:
            reassemble_channels = [input_shape[f].channels for f in in_features if f in input_shape]
        if not (n == len(reassemble_channels) == len(reassemble_strides)) or n < 1:
            raise ValueError(
                f"DPT needs as many in_features {list(in_features)}, reassemble channels "
                f"{list(reassemble_channels)} and strides {list(reassemble_strides)}"
            )
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"DPT in_features {missing} are not backbone outputs {sorted(input_shape)}"
            )
        self.in_features = list(in_features)
        self.reassemble = nn.ModuleList()
        self.project = nn.ModuleList()
        for name, ch, stride in zip(in_features, reassemble_channels, reassemble_strides):
            spec = input_shape[name]
            if direct and spec.stride != stride:
                raise ValueError(
                    f"MODEL.DPT.REASSEMBLE_CHANNELS=[] (no reassemble) needs backbone strides "
                    f"equal to REASSEMBLE_STRIDES; {name!r} has stride {spec.stride}, not {stride}"
                )
            self.reassemble.append(
                nn.Identity()
                if direct
                else nn.Sequential(
                    nn.Conv2d(spec.channels, ch, kernel_size=1),
                    resample_layer(ch, spec.stride, stride),
                )
            )
            self.project.append(nn.Conv2d(ch, features, 3, padding=1, bias=False))
        self.fusion = nn.ModuleList(
            FeatureFusionBlock(features, norm, with_skip=i < n - 1) for i in range(n)
        )
        self.head = nn.Conv2d(features, out_channels, kernel_size=1)
        self.out_stride = min(reassemble_strides) / 2

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], out_channels: int):
        lcfg = cfg.MODEL.DPT
        return {
            "input_shape": input_shape,
            "in_features": lcfg.IN_FEATURES,
            "out_channels": out_channels,
            "reassemble_channels": lcfg.REASSEMBLE_CHANNELS,
            "reassemble_strides": lcfg.REASSEMBLE_STRIDES,
            "features": lcfg.FEATURES,
            "norm": lcfg.NORM,
        }

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """
        Args:
            features (dict[str, Tensor]): backbone outputs, (B, C_i, h_i, w_i).

        Returns:
            Tensor: (B, out_channels, 2 h_0, 2 w_0), h_0 x w_0 the finest reassembled map.
        """
        maps: List[Tensor] = [
            proj(reassemble(features[name]))
            for name, reassemble, proj in zip(self.in_features, self.reassemble, self.project)
        ]
        # coarse to fine: each block's output takes the next finer map's size
        sizes = [tuple(m.shape[-2:]) for m in maps[:-1]]
        path = self.fusion[-1](maps[-1], None, sizes[-1] if sizes else None)
        for i in reversed(range(len(maps) - 1)):
            path = self.fusion[i](path, maps[i], sizes[i - 1] if i > 0 else None)
        return self.head(path)
