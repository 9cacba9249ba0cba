# Follows the official LSeg zero-shot ResNet encoder (isl-org/lang-seg
# modules/models/lseg_vit_zs.py: _make_pretrained_clip_rn101, _make_resnet_backbone).
"""A torchvision ResNet (ImageNet weights, RGB, trainable BatchNorm) as a detectron2 Backbone.

The official LSeg RN101 encoder is ``torchvision.models.resnet101(pretrained=True)`` (the
IMAGENET1K_V1 weights) read at the outputs of layer1..layer4 (strides 4..32), inputs RGB with
ImageNet's mean/std, every BatchNorm trained (and synchronised: Lightning's
``sync_batchnorm=True``, utils.py:34). This backbone gives those four maps as res2..res5.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...utils.downloads import explain_download_failure

__all__ = ["TorchvisionResNetBackbone", "build_torchvision_resnet_backbone", "NORMS"]

NORMS = ("BN", "SyncBN", "FrozenBN")
# torchvision's ImageNet statistics on the 0-255 scale, RGB
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class TorchvisionResNetBackbone(Backbone):
    """layer1..layer4 of a torchvision ResNet as ``res2``..``res5`` (strides 4..32)."""

    def __init__(self, *, resnet: nn.Module, norm: str = "SyncBN", freeze: bool = False):
        """
        Args:
            resnet (nn.Module): a torchvision ResNet (its ``fc`` is dropped).
            norm (str): "BN" (trainable), "SyncBN" (trainable, synchronised across
                processes; plain BatchNorm on one) or "FrozenBN".
            freeze (bool): keep every weight and BatchNorm statistic fixed (FrozenBN).
        """
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"MODEL.TORCHVISION_RESNET.NORM={norm!r} is not one of {NORMS}")
        resnet.fc = nn.Identity()
        if norm == "FrozenBN" or freeze:  # a frozen network keeps its statistics too
            resnet = FrozenBatchNorm2d.convert_frozen_batchnorm(resnet)
        elif norm == "SyncBN":
            resnet = nn.SyncBatchNorm.convert_sync_batchnorm(resnet)
        self.resnet = resnet
        self.resnet.requires_grad_(not freeze)
        widths = [_out_channels(getattr(resnet, f"layer{i}")[-1]) for i in range(1, 5)]
        self._out_features = ["res2", "res3", "res4", "res5"]
        self._out_feature_channels = dict(zip(self._out_features, widths))
        self._out_feature_strides = dict(zip(self._out_features, (4, 8, 16, 32)))
        # the statistics the weights were trained with (0-255, RGB), for the model it feeds
        self.pixel_mean = list(IMAGENET_MEAN)
        self.pixel_std = list(IMAGENET_STD)

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(channels=self._out_feature_channels[n], stride=s)
            for n, s in self._out_feature_strides.items()
        }

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x (Tensor): (B, 3, H, W) normalised RGB images.

        Returns:
            dict[str, Tensor]: res2..res5, (B, C_i, H / s_i, W / s_i) (rounded up).
        """
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        outs = {}
        for i, name in enumerate(self._out_features, start=1):
            x = getattr(r, f"layer{i}")(x)
            outs[name] = x
        return outs


def _out_channels(block: nn.Module) -> int:
    last = getattr(block, "conv3", None) or block.conv2
    return int(last.out_channels)


def _load_weights(resnet: nn.Module, weights: str, arch: str) -> None:
    path = os.path.expanduser(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.TORCHVISION_RESNET.WEIGHTS={weights!r} is neither a torchvision weights tag "
            f"of {arch!r} (e.g. 'IMAGENET1K_V1', downloaded once into torch's hub cache) nor a "
            "local file; give one, or '' for random init"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = resnet.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or [k for k in unexpected if not k.startswith("fc.")]:
        raise ValueError(
            f"MODEL.TORCHVISION_RESNET.WEIGHTS={weights!r} does not fit torchvision {arch!r}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def build_resnet(arch: str, weights: str = "") -> nn.Module:
    """A torchvision ResNet ``arch`` with weights from a torchvision tag, a file, or none."""
    import torchvision

    builder = getattr(torchvision.models, arch, None)
    if not arch.startswith(("resnet", "resnext", "wide_resnet")) or builder is None:
        raise ValueError(f"MODEL.TORCHVISION_RESNET.ARCH={arch!r} is not a torchvision ResNet")
    tags = torchvision.models.get_model_weights(arch).__members__
    if weights in tags:
        # the official code's pretrained=True is IMAGENET1K_V1; torchvision reads its hub
        # cache first and downloads only when the file is not there
        url = getattr(torchvision.models.get_model_weights(arch), weights).url
        local = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        key = "MODEL.TORCHVISION_RESNET.WEIGHTS"
        with explain_download_failure(f"torchvision {arch} {weights}", url, key, local=local):
            return builder(weights=weights)
    resnet = builder(weights=None)
    if weights:
        _load_weights(resnet, weights, arch)
    return resnet


@BACKBONE_REGISTRY.register()
def build_torchvision_resnet_backbone(
    cfg, input_shape: Optional[ShapeSpec] = None
) -> TorchvisionResNetBackbone:
    """A TorchvisionResNetBackbone from MODEL.TORCHVISION_RESNET.{ARCH, WEIGHTS, NORM, FREEZE}."""
    tcfg = cfg.MODEL.TORCHVISION_RESNET
    return TorchvisionResNetBackbone(
        resnet=build_resnet(tcfg.ARCH, tcfg.WEIGHTS), norm=tcfg.NORM, freeze=tcfg.FREEZE
    )
