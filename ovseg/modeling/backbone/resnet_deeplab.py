# Follows detectron2's projects/DeepLab resnet.py (DeepLab stem, res4/res5 dilation, multi-grid),
# re-written, plus dilated basic blocks so ResNet-18/34 students also reach output stride 8.
"""Dilated ResNets for DeepLab-style dense prediction: ``build_resnet_deeplab_backbone``.

detectron2's own ``build_resnet_backbone`` (v0.6) dilates only res5 and only by 2 (output
stride 16). DeepLabv2/v3+ students need output stride 8: res4 dilated by 2 and res5 by 4,
each dilated stage keeping its input resolution (first stride 1). Keys, named as detectron2's
DeepLab project names them: ``MODEL.RESNETS.{STEM_TYPE, RES4_DILATION, RES5_DILATION,
RES5_MULTI_GRID, CONTRACT_DILATION}`` plus the usual ``MODEL.RESNETS.*``. ``STEM_TYPE
"deeplab"`` (three 3x3 convolutions, as ResNet-V1c / detectron2's ``DeepLab/R-103.pkl``)
loads those weights.
"""

from __future__ import annotations

from typing import Sequence

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from torch import Tensor

from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet

__all__ = ["DeepLabStem", "DilatedBasicBlock", "build_resnet_deeplab_backbone", "STEM_TYPES"]

STEM_TYPES = ("basic", "deeplab")
_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


class DeepLabStem(CNNBlockBase):
    """Three 3x3 convolutions (stride 2, 1, 1; widths C/2, C/2, C) and a 3x3 max pool: stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 128, norm: str = "BN"):
        """
        Args:
            in_channels (int): input channels (3 for RGB).
            out_channels (int): channels of the last convolution.
            norm (str): detectron2 norm name for every convolution.
        """
        super().__init__(in_channels, out_channels, 4)
        half = out_channels // 2
        widths = [(in_channels, half, 2), (half, half, 1), (half, out_channels, 1)]
        for i, (cin, cout, stride) in enumerate(widths, start=1):
            conv = Conv2d(
                cin, cout, 3, stride=stride, padding=1, bias=False, norm=get_norm(norm, cout)
            )
            weight_init.c2_msra_fill(conv)
            self.add_module(f"conv{i}", conv)

    def forward(self, x: Tensor) -> Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.relu_(conv(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DilatedBasicBlock(CNNBlockBase):
    """ResNet-18/34's basic block (two 3x3 convolutions) with a dilation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        norm: str = "BN",
    ):
        """
        Args:
            in_channels, out_channels (int): block widths.
            stride (int): stride of the first convolution (and the shortcut).
            dilation (int): dilation of both 3x3 convolutions.
            norm (str): detectron2 norm name.
        """
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(
                in_channels,
                out_channels,
                1,
                stride=stride,
                bias=False,
                norm=get_norm(norm, out_channels),
            )
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            3,
            padding=dilation,
            dilation=dilation,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.conv1, self.conv2, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu_(self.conv1(x)))
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


def _check(cfg, depth: int, dilations: Sequence[int], multi_grid: Sequence[int]) -> None:
    r = cfg.MODEL.RESNETS
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH={depth} is not one of {sorted(_BLOCKS_PER_STAGE)}")
    if r.STEM_TYPE not in STEM_TYPES:
        raise ValueError(f"MODEL.RESNETS.STEM_TYPE={r.STEM_TYPE!r} is not one of {STEM_TYPES}")
    res4, res5 = dilations
    if res4 not in (1, 2) or res5 not in (1, 2, 4):
        raise ValueError(
            f"MODEL.RESNETS.RES4_DILATION={res4} / RES5_DILATION={res5}: use 1 or 2 for res4 "
            "and 1, 2 or 4 for res5 (output stride 8: 2 and 4; 16: 1 and 2; 32: 1 and 1)"
        )
    if res4 == 2 and res5 != 4:
        raise ValueError(
            f"MODEL.RESNETS.RES4_DILATION=2 needs RES5_DILATION=4 (got {res5}): a dilated res4 "
            "keeps stride 8, so res5 must dilate twice as much to keep its receptive field"
        )
    if not multi_grid or any(int(m) < 1 for m in multi_grid):
        raise ValueError(f"MODEL.RESNETS.RES5_MULTI_GRID={list(multi_grid)} must be positive ints")
    if depth in (18, 34):
        if r.RES2_OUT_CHANNELS != r.STEM_OUT_CHANNELS:
            raise ValueError(
                f"ResNet-{depth}: MODEL.RESNETS.RES2_OUT_CHANNELS ({r.RES2_OUT_CHANNELS}) must "
                f"equal STEM_OUT_CHANNELS ({r.STEM_OUT_CHANNELS}) for basic blocks"
            )
        if r.NUM_GROUPS != 1:
            raise ValueError(f"ResNet-{depth}: MODEL.RESNETS.NUM_GROUPS must be 1")
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE: deformable convolutions need detectron2's "
            "compiled ops; build_resnet_deeplab_backbone does not support them"
        )


def _stage_dilations(dilation: int, grid: Sequence[int], n: int, contract: bool) -> list:
    """Dilation of each of a stage's ``n`` blocks: ``dilation`` times the multi-grid factor;
    with ``contract`` and no multi-grid, the first block of a dilated stage takes half (as
    mmseg's ResNetV1c ``contract_dilation``, which the official MaskCLIP+ students use)."""
    dilations = [dilation * grid[i % len(grid)] for i in range(n)]
    if contract and dilation > 1 and all(g == 1 for g in grid):
        dilations[0] = dilation // 2
    return dilations


@BACKBONE_REGISTRY.register()
def build_resnet_deeplab_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """A ResNet with dilated res4/res5 from ``MODEL.RESNETS.*`` (see the module docstring).

    Args:
        cfg (CfgNode): the config.
        input_shape (ShapeSpec): input channels.

    Returns:
        ResNet: detectron2's ResNet; its outputs "res2".."res5" keep stride 8 from res3 on
        when res4/res5 are dilated.
    """
    r = cfg.MODEL.RESNETS
    depth = int(r.DEPTH)
    dilations = (int(r.RES4_DILATION), int(r.RES5_DILATION))
    multi_grid = [int(m) for m in r.RES5_MULTI_GRID]
    _check(cfg, depth, dilations, multi_grid)
    stem_cls = DeepLabStem if r.STEM_TYPE == "deeplab" else BasicStem
    stem = stem_cls(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)

    out_features = list(r.OUT_FEATURES)
    names = {"res2": 2, "res3": 3, "res4": 4, "res5": 5}
    unknown = [f for f in out_features if f not in names]
    if unknown:
        raise ValueError(f"MODEL.RESNETS.OUT_FEATURES {unknown} are not among {list(names)}")
    # stages after the last requested output would get no gradient (DDP complains)
    last = max(names[f] for f in out_features)
    bottleneck = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    stages = []
    for idx, stage in enumerate(range(2, last + 1)):
        dilation = {4: dilations[0], 5: dilations[1]}.get(stage, 1)
        first_stride = 1 if idx == 0 or dilation > 1 else 2
        n = _BLOCKS_PER_STAGE[depth][idx]
        grid = multi_grid if stage == 5 else [1]
        if stage == 5 and len(grid) != n:
            raise ValueError(
                f"MODEL.RESNETS.RES5_MULTI_GRID={multi_grid} needs one entry per res5 block "
                f"({n} for ResNet-{depth})"
            )
        kwargs = {
            "num_blocks": n,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "stride_per_block": [first_stride] + [1] * (n - 1),
            "dilation_per_block": _stage_dilations(dilation, grid, n, r.CONTRACT_DILATION),
            "norm": r.NORM,
        }
        if depth in (18, 34):
            kwargs["block_class"] = DilatedBasicBlock
        else:
            kwargs.update(
                block_class=BottleneckBlock,
                bottleneck_channels=bottleneck,
                stride_in_1x1=r.STRIDE_IN_1X1,
                num_groups=r.NUM_GROUPS,
            )
        stages.append(ResNet.make_stage(**kwargs))
        in_channels, out_channels, bottleneck = out_channels, out_channels * 2, bottleneck * 2
    return ResNet(stem, stages, out_features=out_features).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
