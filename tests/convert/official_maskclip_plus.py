# Re-derives the official MaskCLIP+ student (chongzhou96/MaskCLIP @245d31f: mmseg
# backbones/resnet.py ResNetV1c with utils/res_layer.py, decode_heads/aspp_headv2.py
# ASPPHeadV2, decode_heads/sep_aspp_head.py DepthwiseSeparableASPPHead with aspp_head.py and
# mmcv's DepthwiseSeparableConvModule, decode_heads/maskclip_plus_head.py MaskClipPlusHead,
# and the CLIP names of tools/maskclip_utils/convert_clip_weights.py), re-written without
# mmseg/mmcv.
"""The official MaskCLIP+ model, module for module, so that its ``state_dict()`` has the
official key names and shapes and its test forward computes what the official one does.

mmcv's ``ConvModule`` with a norm is ``conv`` (no bias) + ``bn`` + ReLU; mmseg's ResNetV1c has
a deep stem (``stem.{0,3,6}`` convolutions, ``stem.{1,4,7}`` norms), 'pytorch' style (the
stride in the 3x3 convolution) and ``contract_dilation`` (the first block of a dilated stage
gets half its dilation). The clip-guided head also holds the frozen CLIP teacher: its
weights are named as the official weight converter names them (``clip_state``).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvModule(nn.Module):
    """mmcv ConvModule(conv, BN, ReLU)."""

    def __init__(self, cin: int, cout: int, k: int, *, dilation=1, padding=0, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, padding, dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """mmseg's Bottleneck, 'pytorch' style."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + identity)


def res_layer(inplanes, planes, blocks, stride, dilation, contract_dilation) -> nn.Sequential:
    """mmseg's ResLayer (no multi-grid)."""
    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
        )
    first = dilation // 2 if dilation > 1 and contract_dilation else dilation
    layers = [Bottleneck(inplanes, planes, stride, first, downsample)]
    layers += [Bottleneck(planes * 4, planes, 1, dilation, None) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetV1c(nn.Module):
    """mmseg's ResNetV1c (deep stem), out_indices (0, 1, 2, 3)."""

    def __init__(self, *, blocks=(3, 4, 6, 3), stem_channels=64, base_channels=64,
                 strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True):  # fmt: skip
        super().__init__()
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, 2, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, stem_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_channels),
            nn.ReLU(),
        )  # fmt: skip
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem_channels
        for i, n in enumerate(blocks):
            planes = base_channels * 2**i
            layer = res_layer(inplanes, planes, n, strides[i], dilations[i], contract_dilation)
            self.add_module(f"layer{i + 1}", layer)
            inplanes = planes * 4

    def forward(self, x: Tensor):
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


class ASPPHeadV2(nn.Module):
    """ASPPHeadV2 inside MaskClipPlusHead (its conv_seg, dropout and loss deleted)."""

    def __init__(self, in_channels: int, channels: int, dilations=(6, 12, 18, 24)):
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_channels, channels, 1 if d == 1 else 3, dilation=d,
                       padding=0 if d == 1 else d)
            for d in dilations
        )  # fmt: skip

    def forward_module(self, inputs) -> Tensor:
        x = inputs[-1]  # input_transform None, in_index -1
        return sum(m(x) for m in self.aspp_modules)


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv's: a depthwise 3x3 ConvModule, then a pointwise 1x1 one."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__()
        self.depthwise_conv = ConvModule(
            cin, cin, 3, dilation=dilation, padding=dilation, groups=cin
        )
        self.pointwise_conv = ConvModule(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class DepthwiseSeparableASPPHead(nn.Module):
    """mmseg's DeepLabv3+ head inside MaskClipPlusHead (conv_seg, dropout and loss deleted)."""

    def __init__(self, in_channels, channels, c1_in_channels, c1_channels=48,
                 dilations=(1, 12, 24, 36)):  # fmt: skip
        super().__init__()
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1)
        )
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_channels, channels, 1) if d == 1
            else DepthwiseSeparableConvModule(in_channels, channels, d)
            for d in dilations
        )  # fmt: skip
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, padding=1)
        self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(channels + c1_channels, channels),
            DepthwiseSeparableConvModule(channels, channels),
        )

    def forward_module(self, inputs) -> Tensor:
        x = inputs[-1]
        pooled = F.interpolate(
            self.image_pool(x), size=x.shape[2:], mode="bilinear", align_corners=False
        )
        out = self.bottleneck(torch.cat([pooled, *(m(x) for m in self.aspp_modules)], dim=1))
        c1 = self.c1_bottleneck(inputs[0])
        out = F.interpolate(out, size=c1.shape[2:], mode="bilinear", align_corners=False)
        return self.sep_bottleneck(torch.cat([out, c1], dim=1))


class MaskClipPlusHead(nn.Module):
    """The head's student side: ASPP sum, then the fixed text classifier (background first)."""

    def __init__(self, *, in_channels, text_categories, text_channels, cls_bg, c1_in_channels=0):
        super().__init__()
        self.register_buffer("_iter_counter", torch.tensor(0))
        if c1_in_channels:  # the Context model's DeepLabv3+
            self.decode_module = DepthwiseSeparableASPPHead(
                in_channels, text_channels, c1_in_channels
            )
        else:
            self.decode_module = ASPPHeadV2(in_channels, text_channels)
        self.register_buffer("text_embeddings", torch.randn(text_categories, text_channels))
        self.cls_bg = cls_bg
        if cls_bg:
            self.bg_embeddings = nn.Parameter(torch.randn(1, text_channels))

    def cls_seg(self, feat: Tensor) -> Tensor:
        output = F.conv2d(feat, self.text_embeddings[:, :, None, None])
        if self.cls_bg:
            bg = self.bg_embeddings / self.bg_embeddings.norm(dim=-1, keepdim=True)
            output = torch.cat([F.conv2d(feat, bg[:, :, None, None]), output], dim=1)
        return output

    def forward(self, inputs) -> Tensor:
        return self.cls_seg(self.decode_module.forward_module(inputs))


class OfficialMaskCLIPPlus(nn.Module):
    """backbone + decode_head, as mmseg's EncoderDecoder names them; whole-image test."""

    def __init__(self, *, backbone: dict, text_categories: int, text_channels: int, cls_bg=False,
                 v3plus=False):  # fmt: skip
        super().__init__()
        self.backbone = ResNetV1c(**backbone)
        base = backbone.get("base_channels", 64)
        self.decode_head = MaskClipPlusHead(
            in_channels=base * 8 * 4, text_categories=text_categories,
            text_channels=text_channels, cls_bg=cls_bg, c1_in_channels=base * 4 if v3plus else 0,
        )  # fmt: skip

    def encode_decode(self, img: Tensor) -> Tensor:
        out = self.decode_head(self.backbone(img))
        return F.interpolate(out, size=img.shape[2:], mode="bilinear", align_corners=False)

    def whole_inference(self, img: Tensor) -> Tensor:
        """mmseg's test: ``encode_decode``, then the softmax over the classes."""
        return self.encode_decode(img).softmax(dim=1)


# ------------------------------------------------------------------ the teacher's names
_RN_STEM = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4, "conv3": 6, "bn3": 7}


def clip_state(visual_state: dict, vit: bool) -> dict:
    """A CLIP image tower's weights under the names the official converter gives them
    (``decode_head.clip.*`` and the head's projections), from open_clip's ``visual.*``."""
    out = {}
    for key, value in visual_state.items():
        if not key.startswith("visual."):
            continue
        key = key[len("visual.") :]
        if vit:
            out.update(_vit_name(key, value))
        elif key.startswith("attnpool."):
            if "_proj." in key:
                name, kind = key.split(".")[1:3]
                value = value[:, :, None, None] if kind == "weight" else value
                out[f"decode_head.{name}.{kind}"] = value
        elif key.startswith("layer"):
            if "downsample" in key:
                parts = key.split(".")
                parts[3] = str(int(parts[3]) + 1)  # [AvgPool, conv, bn] in mmseg's ResNetClip
                key = ".".join(parts)
            out["decode_head.clip." + key] = value
        else:
            name, kind = key.split(".")
            out[f"decode_head.clip.stem.{_RN_STEM[name]}.{kind}"] = value
    return out


def _vit_name(key: str, value: Tensor) -> dict:
    if key == "proj":
        return {"decode_head.proj.weight": value.t()[:, :, None, None]}
    simple = {
        "class_embedding": ("cls_token", value[None, None, :]),
        "positional_embedding": ("pos_embed", value[None]),
        "conv1.weight": ("patch_embed.projection.weight", value),
    }
    if key in simple:
        name, value = simple[key]
        return {f"decode_head.clip.{name}": value}
    key = re.sub(r"^ln_pre\.", "ln0.", key)
    key = re.sub(r"^ln_post\.", "ln1.", key)
    if key.startswith("transformer.resblocks."):
        key = "layers." + key[len("transformer.resblocks.") :]
        key = key.replace("mlp.c_fc", "ffn.layers.0.0").replace("mlp.c_proj", "ffn.layers.1")
        key = key.replace("attn.", "attn.attn.").replace("ln_", "ln")
    return {f"decode_head.clip.{key}": value}
