# Follows mmseg's ResNetV1c names (chongzhou96/MaskCLIP @245d31f: mmseg/models/backbones/
# resnet.py, mmseg/models/utils/res_layer.py) as open-mmlab's ImageNet checkpoints hold them,
# re-written.
"""mmseg ResNetV1c weights into ovseg's DeepLab ResNet (``build_resnet_deeplab_backbone``).

Two uses: the student inside an official MaskCLIP+ checkpoint (``backbone.*``, see
``maskclip_plus``), and ``--method resnet_v1c``: the ImageNet backbone the official MaskCLIP+
students start from (``pretrained='open-mmlab://resnet50_v1c'`` in the model bases,
``configs/_base_/models/maskclip_plus_{r50,vit16}.py:5``, which the annotation-free configs
keep and the zero-shot ones set to ``resnet101_v1c``, e.g.
``zero_shot/maskclip_plus_r50_deeplabv2_r101-d8_512x512_20k_voc12aug_20.py:8``).
Such a checkpoint holds mmseg's ResNetV1c under the backbone's own names (deep stem
``stem.{0,3,6}`` convolutions and ``stem.{1,4,7}`` norms, ``layer<n>.<j>.{conv,bn}<k>``,
``downsample.{0,1}``; a ``backbone.`` prefix as in mmcls is accepted) and the ImageNet
classifier ``fc``, which is dropped: mmseg's ResNetV1c has none, and mmcv's loader skips it as
an unexpected key. The result is a backbone-only ovseg checkpoint for ``MODEL.WEIGHTS``.
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from .core import ConversionError, ConversionReport, Rule, apply_rules, require

__all__ = [
    "BN_STATE",
    "build_backbone_only",
    "check_resnet",
    "convert_resnet_v1c",
    "fill_counters",
    "official_depth",
    "resnet_notes",
    "resnet_rules",
    "resnet_v1c_settings",
]

METHOD = "ResNetV1c (ImageNet)"
BN_STATE = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
BACKBONE = "build_resnet_deeplab_backbone"
# (blocks per stage, bottleneck) -> depth, as mmseg's ResNet.arch_settings
_DEPTHS = {
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), False): 34,
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
    ((3, 8, 36, 3), True): 152,
}
_NEEDED = {
    r"backbone\.stem\.conv3\.weight": "stem.6.weight (ResNetV1c's deep stem)",
    r"backbone\.res5\.0\.conv1\.weight": "layer4.0.conv1.weight",
}


def resnet_rules(prefix: str = r"backbone\.") -> List[Rule]:
    """mmseg ResNet (V1c deep stem, or V1's 7x7 stem) -> ovseg's DeepLab ResNet.

    Args:
        prefix (str): regex in front of the official backbone's names (``backbone\\.`` inside
            a segmentor; optional for a bare ImageNet backbone). It must not capture.
    """
    rules = [
        Rule(prefix + r"conv1\.weight", "backbone.stem.conv1.weight"),
        Rule(prefix + rf"bn1\.{BN_STATE}", r"backbone.stem.conv1.norm.\1"),
    ]
    for k, (conv, bn) in enumerate(((0, 1), (3, 4), (6, 7)), start=1):
        rules.append(Rule(prefix + rf"stem\.{conv}\.weight", f"backbone.stem.conv{k}.weight"))
        rules.append(Rule(prefix + rf"stem\.{bn}\.{BN_STATE}", rf"backbone.stem.conv{k}.norm.\1"))
    rules.append(
        Rule(
            prefix + r"layer\d\.\d+\.downsample\.2\..+",
            refuse=True,
            why="an average-pooled shortcut (ResNetV1d, avg_down=True): ovseg's DeepLab "
            "ResNet has a strided 1x1 convolution there",
        )
    )
    for n in range(1, 5):
        block, res = prefix + rf"layer{n}\.(\d+)\.", rf"backbone.res{n + 1}.\1."
        rules += [
            Rule(block + r"conv([123])\.weight", res + r"conv\2.weight"),
            Rule(block + rf"bn([123])\.{BN_STATE}", res + r"conv\2.norm.\3"),
            Rule(block + r"downsample\.0\.weight", res + "shortcut.weight"),
            Rule(block + rf"downsample\.1\.{BN_STATE}", res + r"shortcut.norm.\2"),
        ]
    return rules


def official_depth(converted: Mapping[str, Tensor]) -> Optional[int]:
    """The ResNet depth of converted ``backbone.res<n>.<j>.*`` tensors (None: not a known one)."""
    blocks = [0, 0, 0, 0]
    for key in converted:
        m = re.fullmatch(r"backbone\.res([2-5])\.(\d+)\.conv1\.weight", key)
        if m:
            stage = int(m.group(1)) - 2
            blocks[stage] = max(blocks[stage], int(m.group(2)) + 1)
    bottleneck = any(re.fullmatch(r"backbone\.res\d\.\d+\.conv3\.weight", k) for k in converted)
    return _DEPTHS.get((tuple(blocks), bottleneck))


def check_resnet(cfg, converted: Mapping[str, Tensor], method: str) -> None:
    """Refuse a config whose DeepLab ResNet the official weights do not fit, naming the key.

    Args:
        cfg (CfgNode): its MODEL.RESNETS.
        converted (Mapping[str, Tensor]): the converted ``backbone.*`` tensors.
        method (str): for the message.
    """
    r = cfg.MODEL.RESNETS
    stem = converted.get("backbone.stem.conv3.weight")
    if stem is not None and r.STEM_TYPE != "deeplab":
        raise ConversionError(
            f"{method}: the official stem is ResNetV1c's three 3x3 convolutions; set "
            f"MODEL.RESNETS.STEM_TYPE deeplab (the config has {r.STEM_TYPE!r})"
        )
    if stem is not None and stem.shape[0] != r.STEM_OUT_CHANNELS:
        raise ConversionError(
            f"{method}: the official stem ends with {stem.shape[0]} channels (mmseg ResNetV1c "
            f"stem_channels); set MODEL.RESNETS.STEM_OUT_CHANNELS {stem.shape[0]} (the config "
            f"has {r.STEM_OUT_CHANNELS})"
        )
    depth = official_depth(converted)
    if depth is not None and depth != int(r.DEPTH):
        raise ConversionError(
            f"{method}: the official backbone is a ResNet-{depth}; set MODEL.RESNETS.DEPTH "
            f"{depth} (the config has {r.DEPTH})"
        )


def resnet_notes(cfg) -> List[str]:
    """Settings under which ovseg's DeepLab ResNet computes otherwise than the official
    students' mmseg ResNetV1c ('pytorch' style, ``contract_dilation=True``, no multi-grid;
    ``configs/_base_/models/maskclip_plus_r50.py:6-16``)."""
    r, notes = cfg.MODEL.RESNETS, []
    if r.STRIDE_IN_1X1:
        notes.append("MODEL.RESNETS.STRIDE_IN_1X1 True: mmseg's 'pytorch'-style ResNetV1c "
                     "strides in the 3x3 convolution (set it False)")  # fmt: skip
    dilated = int(r.RES4_DILATION) > 1 or int(r.RES5_DILATION) > 1
    if dilated and not r.CONTRACT_DILATION:
        notes.append(
            "MODEL.RESNETS.CONTRACT_DILATION False: mmseg's ResNetV1c (contract_dilation=True) "
            "gives the first block of a dilated stage half the stage's dilation (res4: 1 then "
            "2; res5: 2 then 4), so the features differ (set it True)"
        )
    if any(int(g) != 1 for g in r.RES5_MULTI_GRID):
        notes.append(f"MODEL.RESNETS.RES5_MULTI_GRID {list(r.RES5_MULTI_GRID)}: the official "
                     "ResNetV1c has no multi-grid (set [1, 1, 1])")  # fmt: skip
    return notes


def convert_resnet_v1c(
    state: Mapping[str, Tensor],
) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """An ImageNet ResNetV1c state dict (open-mmlab's) -> ovseg ``backbone.*`` tensors.

    Args:
        state (Mapping[str, Tensor]): the checkpoint's (``state_dict``) tensors.

    Returns:
        tuple: the ovseg state dict (the backbone alone), the report.

    Raises:
        ConversionError: naming keys ovseg has no place for (a 7x7 stem, average-pooled
            shortcuts, anything unknown) or a missing deep stem.
    """
    report = ConversionReport(METHOD)
    rules = [
        Rule(
            r"(?:backbone\.)?(conv1\.weight|bn1\..+)",
            refuse=True,
            why="a 7x7 stem (ResNetV1b, e.g. torchvision's): the official students' "
            "ResNetV1c has the deep stem of three 3x3 convolutions",
        ),
        *resnet_rules(r"(?:backbone\.)?"),
        Rule(
            r"(?:head\.)?fc\.(weight|bias)",
            why="the ImageNet classifier (mmseg's ResNetV1c has none; mmcv's loader skips it)",
        ),
    ]
    out = apply_rules(state, rules, report)
    require(out, _NEEDED, METHOD)
    depth = official_depth(out)
    stem = out["backbone.stem.conv3.weight"].shape[0]
    res2 = out["backbone.res2.0.conv1.weight"].shape[0]
    report.info.append(
        f"ResNetV1c-{depth or '?'}: deep stem {stem // 2}, {stem // 2}, {stem} wide, res2 "
        f"bottleneck {res2} wide"
    )
    return out, report


def fill_counters(key: str, like: Tensor) -> Optional[Tuple[Tensor, str]]:
    """A zero batch-norm update counter where the ImageNet checkpoint has none, else None."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros_like(like), "batch-norm update counter (absent officially): 0"
    return None


class _BackboneOnly(nn.Module):
    """Holds a backbone under the name ``backbone``, as every ovseg meta-architecture does."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone


def _check_backbone_name(cfg) -> None:
    if cfg.MODEL.BACKBONE.NAME != BACKBONE:
        raise ConversionError(
            f"{METHOD}: the weights are a DeepLab ResNet's; set MODEL.BACKBONE.NAME {BACKBONE} "
            f"(the config has {cfg.MODEL.BACKBONE.NAME!r})"
        )


def build_backbone_only(cfg) -> nn.Module:
    """The backbone ``cfg`` builds (random weights, CPU, eval), as ``<module>.backbone``: an
    ImageNet checkpoint is checked against it without building the rest (nor its CLIP)."""
    from ..modeling.backbone import build_backbone

    _check_backbone_name(cfg)
    return _BackboneOnly(build_backbone(cfg)).eval()


def resnet_v1c_settings(
    cfg, model, converted: Mapping[str, Tensor], report: ConversionReport
) -> None:
    """Refuse a DeepLab ResNet the weights do not fit (with the key to set); note settings
    under which the backbone computes otherwise than the official students'.

    Args:
        cfg (CfgNode): the config.
        model (nn.Module): what :func:`build_backbone_only` built, or a whole model (unused).
        converted (Mapping[str, Tensor]): the converted tensors.
        report (ConversionReport): gets the notes.
    """
    _check_backbone_name(cfg)
    check_resnet(cfg, converted, METHOD)
    report.notes += resnet_notes(cfg)
