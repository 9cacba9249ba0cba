# DeepLabv2's ASPP head (Chen et al. 2017; MaskCLIP+'s ASPPHeadV2 in chongzhou96/MaskCLIP),
# DeepLabv3+'s decoder (as detectron2's projects/DeepLab DeepLabV3PlusHead) and as mmseg's
# DepthwiseSeparableASPPHead (MaskCLIP+'s Context student), re-written.
"""DeepLab heads producing dense embeddings (or logits): ``DeepLabV2Head``, ``DeepLabV3PlusHead``
and ``DepthwiseSeparableASPPHead`` (mmseg's layout of DeepLabv3+).

All are ovseg dense heads (``DENSE_HEAD_REGISTRY``, MODEL.DENSE_HEAD.NAME) mapping backbone
features to a (B, out_channels, h, w) map (MaskCLIP+: the CLIP embedding size; others: class
logits); no loss. Config keys follow detectron2's DeepLab project: ``MODEL.SEM_SEG_HEAD.
{IN_FEATURES, ASPP_CHANNELS, ASPP_DILATIONS, ASPP_DROPOUT, PROJECT_FEATURES, PROJECT_CHANNELS,
CONVS_DIM, NORM, USE_DEPTHWISE_SEPARABLE_CONV, OUTPUT_PROJECTION}``.

``OUTPUT_PROJECTION`` (default True) ends a head with a 1x1 convolution to ``out_channels``;
without it the last (ReLU'd, with a norm) map is the output, as MaskCLIP+'s official heads
(``forward_module``: MaskClipPlusHead deletes ``conv_seg``), ``out_channels`` wide (from a
config, the width is derived). Branches keep their names (``branches.<i>.weight``,
``branches.<i>.norm.*``), so official weights map onto them.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ASPP, Conv2d, DepthwiseSeparableConv2d, ShapeSpec, get_norm

from .build import DENSE_HEAD_REGISTRY

__all__ = ["DeepLabV2Head", "DeepLabV3PlusHead", "DepthwiseSeparableASPPHead"]


def _one_feature(input_shape: Dict[str, ShapeSpec], names: Sequence[str], what: str) -> str:
    if len(names) != 1:
        raise ValueError(f"{what} reads exactly one backbone feature, got {list(names)}")
    if names[0] not in input_shape:
        raise ValueError(
            f"{what}: backbone feature {names[0]!r} is not among the backbone's outputs "
            f"{sorted(input_shape)}; add it to MODEL.RESNETS.OUT_FEATURES (or the backbone's)"
        )
    return names[0]


def _check_width(output_projection: bool, width: int, out_channels: int, what: str) -> None:
    if not output_projection and int(width) != int(out_channels):
        raise ValueError(
            f"Without an output projection the head's {what} ({width}) is its output and must "
            f"equal out_channels ({out_channels}); pass {what}={out_channels} or keep "
            "output_projection (MODEL.SEM_SEG_HEAD.OUTPUT_PROJECTION True)"
        )


def _predictor(channels: int, out_channels: int) -> nn.Conv2d:
    """The 1x1 output projection (normal std 0.01, zero bias)."""
    predictor = nn.Conv2d(channels, out_channels, kernel_size=1)
    nn.init.normal_(predictor.weight, std=0.01)
    nn.init.zeros_(predictor.bias)
    return predictor


@DENSE_HEAD_REGISTRY.register()
class DeepLabV2Head(nn.Module):
    """DeepLabv2's ASPP: parallel 3x3 convolutions of different dilations, summed.

    Each branch maps the feature to ``channels`` (then norm and ReLU when ``norm`` is set, as
    MaskCLIP+'s ASPPHeadV2); with ``output_projection`` the sum goes through a 1x1 convolution
    to ``out_channels`` so the output can point in any direction of the embedding space (a
    ReLU'd sum could not); without it the sum is the output (official MaskCLIP+).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_feature: str,
        out_channels: int,
        channels: int = 512,
        dilations: Sequence[int] = (6, 12, 18, 24),
        norm: str = "BN",
        dropout: float = 0.0,
        output_projection: bool = True,
    ):
        """
        Args:
            input_shape (dict[str, ShapeSpec]): the backbone's output shapes.
            in_feature (str): the feature read (e.g. "res5").
            out_channels (int): output channels (embedding size or classes).
            channels (int): width of each branch (= out_channels without the projection).
            dilations (Sequence[int]): one 3x3 branch per dilation (1 = a 1x1 branch).
            norm (str): detectron2 norm for the branches ("" = none: plain DeepLabv2, linear).
            dropout (float): dropout before the output projection (on the output without it).
            output_projection (bool): end with a 1x1 convolution to ``out_channels``.
        """
        super().__init__()
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"ASPP dilations must be positive ints, got {list(dilations)}")
        _check_width(output_projection, channels, out_channels, "channels")
        self.in_feature = _one_feature(input_shape, [in_feature], "DeepLabV2Head")
        in_channels = input_shape[in_feature].channels
        self.stride = input_shape[in_feature].stride
        self.branches = nn.ModuleList()
        for d in dilations:
            d = int(d)
            conv = Conv2d(
                in_channels,
                channels,
                kernel_size=1 if d == 1 else 3,
                padding=0 if d == 1 else d,
                dilation=d,
                bias=not norm,
                norm=get_norm(norm, channels),
                activation=nn.ReLU() if norm else None,
            )
            weight_init.c2_msra_fill(conv)
            self.branches.append(conv)
        self.dropout = float(dropout)
        self.predictor = _predictor(channels, out_channels) if output_projection else None

    @classmethod
    def from_config(
        cls, cfg, input_shape: Dict[str, ShapeSpec], out_channels: Optional[int] = None
    ):
        h = cfg.MODEL.SEM_SEG_HEAD
        out_channels = out_channels if out_channels is not None else h.NUM_CLASSES
        return {
            "input_shape": input_shape,
            "in_feature": _one_feature(input_shape, h.IN_FEATURES, "DeepLabV2Head"),
            "out_channels": out_channels,
            # official ASPPHeadV2: channels = the text embedding size (maskclip_plus_r50.py:20,32)
            "channels": h.ASPP_CHANNELS if h.OUTPUT_PROJECTION else out_channels,
            "dilations": list(h.ASPP_DILATIONS),
            "norm": h.NORM,
            "dropout": h.ASPP_DROPOUT,
            "output_projection": h.OUTPUT_PROJECTION,
        }

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """
        Args:
            features (dict[str, Tensor]): backbone outputs.

        Returns:
            Tensor: (B, out_channels, h, w) at the feature's stride.
        """
        x = features[self.in_feature]
        out = sum(branch(x) for branch in self.branches)
        out = F.dropout(out, self.dropout, training=self.training) if self.dropout > 0 else out
        return self.predictor(out) if self.predictor is not None else out


@DENSE_HEAD_REGISTRY.register()
class DeepLabV3PlusHead(nn.Module):
    """DeepLabv3+: ASPP on the coarsest feature, then a decoder fusing finer projected features.

    ASPP (a 1x1 branch, three dilated 3x3 branches, image pooling; detectron2's
    ``layers.ASPP``) runs on ``in_feature``; for each of ``project_features`` (coarse to
    fine) the running map is upsampled to that feature's size, concatenated with its 1x1
    projection and fused by two 3x3 convolutions; a 1x1 convolution gives ``out_channels``
    (without ``output_projection`` the fused map is the output, as the official MaskCLIP+
    DepthwiseSeparableASPPHead).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_feature: str,
        out_channels: int,
        project_features: Sequence[str] = ("res2",),
        project_channels: Sequence[int] = (48,),
        aspp_channels: int = 256,
        aspp_dilations: Sequence[int] = (12, 24, 36),
        aspp_dropout: float = 0.1,
        decoder_channels: int = 256,
        norm: str = "BN",
        use_depthwise_separable_conv: bool = False,
        output_projection: bool = True,
    ):
        """
        Args:
            input_shape (dict[str, ShapeSpec]): the backbone's output shapes.
            in_feature (str): the coarse feature under ASPP (e.g. "res5").
            out_channels (int): output channels (embedding size or classes).
            project_features: finer features fused by the decoder (e.g. ["res2"]).
            project_channels: their 1x1 projection widths (one per feature).
            aspp_channels (int): ASPP width.
            aspp_dilations: the three dilations of ASPP's 3x3 branches.
            aspp_dropout (float): dropout after ASPP.
            decoder_channels (int): width of the fusion convolutions.
            norm (str): detectron2 norm name.
            use_depthwise_separable_conv (bool): separable 3x3 convolutions (the paper's).
            output_projection (bool): end with a 1x1 convolution to ``out_channels``; without
                it the last map (``decoder_channels`` wide, or ``aspp_channels`` without
                project features) must be ``out_channels`` wide.
        """
        super().__init__()
        self._check_settings(project_features, project_channels, aspp_dilations)
        last = decoder_channels if project_features else aspp_channels
        what = "decoder_channels" if project_features else "aspp_channels"
        _check_width(output_projection, last, out_channels, what)
        self.in_feature = _one_feature(input_shape, [in_feature], "DeepLabV3PlusHead")
        for name in project_features:
            _one_feature(input_shape, [name], "DeepLabV3PlusHead (PROJECT_FEATURES)")
        # coarse to fine
        order = sorted(project_features, key=lambda f: -input_shape[f].stride)
        self.project_features = list(order)
        widths = dict(zip(project_features, project_channels))
        self.aspp = ASPP(
            input_shape[in_feature].channels,
            aspp_channels,
            list(aspp_dilations),
            norm=norm,
            activation=nn.ReLU(),
            dropout=aspp_dropout,
            use_depthwise_separable_conv=use_depthwise_separable_conv,
        )
        self.projections = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        channels = aspp_channels
        for name in self.project_features:
            self.projections[name] = self._projection(
                input_shape[name].channels, widths[name], norm
            )
            self.fusions[name] = nn.Sequential(
                self._conv3x3(
                    channels + widths[name], decoder_channels, norm, use_depthwise_separable_conv
                ),
                self._conv3x3(
                    decoder_channels, decoder_channels, norm, use_depthwise_separable_conv
                ),
            )
            channels = decoder_channels
        finest = self.project_features[-1] if self.project_features else in_feature
        self.stride = input_shape[finest].stride
        self.predictor = _predictor(channels, out_channels) if output_projection else None

    @staticmethod
    def _check_settings(
        project_features: Sequence[str],
        project_channels: Sequence[int],
        aspp_dilations: Sequence[int],
    ) -> None:
        if len(project_features) != len(project_channels):
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.PROJECT_FEATURES {list(project_features)} and "
                f"PROJECT_CHANNELS {list(project_channels)} must have the same length"
            )
        if len(aspp_dilations) != 3:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.ASPP_DILATIONS must hold 3 dilations for DeepLabv3+, got "
                f"{list(aspp_dilations)}"
            )

    @staticmethod
    def _projection(cin: int, cout: int, norm: str) -> nn.Module:
        """The 1x1 projection of a finer feature (Xavier-initialised, as detectron2's)."""
        proj = Conv2d(cin, cout, 1, bias=not norm, norm=get_norm(norm, cout), activation=nn.ReLU())
        weight_init.c2_xavier_fill(proj)
        return proj

    @staticmethod
    def _conv3x3(cin: int, cout: int, norm: str, separable: bool) -> nn.Module:
        if separable:
            return DepthwiseSeparableConv2d(
                cin, cout, 3, padding=1, norm1=norm, activation1=nn.ReLU(), norm2=norm,
                activation2=nn.ReLU(),
            )  # fmt: skip
        conv = Conv2d(
            cin, cout, 3, padding=1, bias=not norm, norm=get_norm(norm, cout), activation=nn.ReLU()
        )
        weight_init.c2_xavier_fill(conv)
        return conv

    @classmethod
    def from_config(
        cls, cfg, input_shape: Dict[str, ShapeSpec], out_channels: Optional[int] = None
    ):
        h = cfg.MODEL.SEM_SEG_HEAD
        out_channels = out_channels if out_channels is not None else h.NUM_CLASSES
        # without the projection the last map is the output: its width is out_channels
        derived = not h.OUTPUT_PROJECTION
        aspp_derived = derived and not h.PROJECT_FEATURES
        return {
            "input_shape": input_shape,
            "in_feature": _one_feature(input_shape, h.IN_FEATURES, "DeepLabV3PlusHead"),
            "out_channels": out_channels,
            "project_features": list(h.PROJECT_FEATURES),
            "project_channels": list(h.PROJECT_CHANNELS),
            "aspp_channels": out_channels if aspp_derived else h.ASPP_CHANNELS,
            "aspp_dilations": list(h.ASPP_DILATIONS),
            "aspp_dropout": h.ASPP_DROPOUT,
            "decoder_channels": out_channels if derived else h.CONVS_DIM,
            "norm": h.NORM,
            "use_depthwise_separable_conv": h.USE_DEPTHWISE_SEPARABLE_CONV,
            "output_projection": h.OUTPUT_PROJECTION,
        }

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """
        Args:
            features (dict[str, Tensor]): backbone outputs.

        Returns:
            Tensor: (B, out_channels, h, w) at the finest projected feature's stride.
        """
        y = self.aspp(features[self.in_feature])
        for name in self.project_features:
            low = self.projections[name](features[name])
            y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
            y = self.fusions[name](torch.cat([low, y], dim=1))
        return self.predictor(y) if self.predictor is not None else y


def _conv_norm_relu(cin: int, cout: int, kernel: int, norm: str, dilation: int = 1) -> Conv2d:
    """mmcv's ConvModule: a convolution (bias only without a norm), norm, ReLU, with Kaiming
    (fan-out) weights as mmcv's ``kaiming_init`` and detectron2's ``c2_msra_fill``."""
    conv = Conv2d(
        cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=not norm,
        norm=get_norm(norm, cout), activation=nn.ReLU(),
    )  # fmt: skip
    weight_init.c2_msra_fill(conv)
    return conv


def _separable(cin: int, cout: int, norm: str, dilation: int = 1) -> DepthwiseSeparableConv2d:
    """mmcv's DepthwiseSeparableConvModule: 3x3 depthwise, 1x1 pointwise, each normed, ReLU'd."""
    return DepthwiseSeparableConv2d(
        cin, cout, 3, padding=dilation, dilation=dilation, norm1=norm, activation1=nn.ReLU(),
        norm2=norm, activation2=nn.ReLU(),
    )  # fmt: skip


@DENSE_HEAD_REGISTRY.register()
class DepthwiseSeparableASPPHead(nn.Module):
    """DeepLabv3+ as mmseg's DepthwiseSeparableASPPHead (MaskCLIP+'s official Context student).

    An image-pool branch (global average, 1x1 convolution with norm), then one branch per
    dilation (1: a 1x1 convolution; else a depthwise-separable 3x3), concatenated in that
    order and fused by a 3x3 convolution; the decoder resizes the result to the projected
    finer feature (a 1x1 convolution), concatenates [ASPP, projection] and applies two
    depthwise-separable 3x3 convolutions. Every layer is ``channels`` wide, with norm and ReLU;
    unlike :class:`DeepLabV3PlusHead`'s (detectron2's ASPP: pool branch last without norm, a
    1x1 fusion, dropout) the layers match the official ones one to one.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_feature: str,
        out_channels: int,
        project_feature: Optional[str] = "res2",
        project_channels: int = 48,
        channels: int = 512,
        dilations: Sequence[int] = (1, 12, 24, 36),
        norm: str = "BN",
        output_projection: bool = True,
    ):
        """
        Args:
            input_shape (dict[str, ShapeSpec]): the backbone's output shapes.
            in_feature (str): the coarse feature under ASPP (e.g. "res5").
            out_channels (int): output channels (embedding size or classes).
            project_feature (str, optional): the finer feature of the decoder (None: none).
            project_channels (int): its 1x1 projection's width (official c1_channels 48).
            channels (int): width of every other layer (= out_channels without projection).
            dilations: one ASPP branch per dilation (official: (1, 12, 24, 36)).
            norm (str): detectron2 norm name.
            output_projection (bool): end with a 1x1 convolution to ``out_channels``.
        """
        super().__init__()
        _check_width(output_projection, channels, out_channels, "channels")
        self.in_feature = _one_feature(input_shape, [in_feature], "DepthwiseSeparableASPPHead")
        cin = input_shape[in_feature].channels
        pool = _conv_norm_relu(cin, channels, 1, norm)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), pool)
        self.branches = nn.ModuleList(
            _conv_norm_relu(cin, channels, 1, norm) if int(d) == 1
            else _separable(cin, channels, norm, int(d))
            for d in dilations
        )  # fmt: skip
        self.bottleneck = _conv_norm_relu((len(dilations) + 1) * channels, channels, 3, norm)
        self.project_feature = project_feature
        self.stride = input_shape[in_feature].stride
        self.projection = None
        fused = channels
        if project_feature:
            _one_feature(input_shape, [project_feature], "DepthwiseSeparableASPPHead")
            shape = input_shape[project_feature]
            self.projection = _conv_norm_relu(shape.channels, project_channels, 1, norm)
            self.stride, fused = shape.stride, channels + project_channels
        self.fusion = nn.Sequential(
            _separable(fused, channels, norm), _separable(channels, channels, norm)
        )
        self.predictor = _predictor(channels, out_channels) if output_projection else None

    @classmethod
    def from_config(
        cls, cfg, input_shape: Dict[str, ShapeSpec], out_channels: Optional[int] = None
    ):
        h = cfg.MODEL.SEM_SEG_HEAD
        out_channels = out_channels if out_channels is not None else h.NUM_CLASSES
        if len(h.PROJECT_FEATURES) > 1 or len(h.PROJECT_FEATURES) != len(h.PROJECT_CHANNELS):
            raise ValueError(
                f"DepthwiseSeparableASPPHead fuses at most one finer feature: got "
                f"MODEL.SEM_SEG_HEAD.PROJECT_FEATURES {list(h.PROJECT_FEATURES)} and "
                f"PROJECT_CHANNELS {list(h.PROJECT_CHANNELS)}; give one of each or none"
            )
        return {
            "input_shape": input_shape,
            "in_feature": _one_feature(input_shape, h.IN_FEATURES, "DepthwiseSeparableASPPHead"),
            "out_channels": out_channels,
            "project_feature": h.PROJECT_FEATURES[0] if h.PROJECT_FEATURES else None,
            "project_channels": h.PROJECT_CHANNELS[0] if h.PROJECT_CHANNELS else 0,
            # official: every layer is `channels` wide, the text embedding size without conv_seg
            "channels": h.ASPP_CHANNELS if h.OUTPUT_PROJECTION else out_channels,
            "dilations": list(h.ASPP_DILATIONS),
            "norm": h.NORM,
            "output_projection": h.OUTPUT_PROJECTION,
        }

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """
        Args:
            features (dict[str, Tensor]): backbone outputs.

        Returns:
            Tensor: (B, out_channels, h, w) at the projected feature's stride.
        """
        x = features[self.in_feature]
        pooled = F.interpolate(
            self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        y = self.bottleneck(torch.cat([pooled, *(branch(x) for branch in self.branches)], 1))
        if self.projection is not None:
            low = self.projection(features[self.project_feature])
            y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
            y = torch.cat([y, low], dim=1)
        y = self.fusion(y)
        return self.predictor(y) if self.predictor is not None else y
