"""A trainable copy of the CLIP teacher's ModifiedResNet image tower as a detectron2 Backbone."""

from __future__ import annotations

import copy
from typing import Dict, Optional, Sequence

from open_clip.modified_resnet import ModifiedResNet
from torch import Tensor, nn

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...clip import CLIPTeacher, build_clip_teacher

__all__ = ["CLIPResNetBackbone", "build_clip_resnet_backbone"]

_STAGES = ("res2", "res3", "res4", "res5")


class CLIPResNetBackbone(Backbone):
    """The stem and four stages of an open_clip ``ModifiedResNet`` as res2..res5 (strides 4,
    8, 16, 32); the attention pool is dropped. Inputs are padded to a multiple of 32."""

    def __init__(
        self,
        *,
        visual: ModifiedResNet,
        out_features: Sequence[str] = _STAGES,
        freeze_at: int = 0,
        norm: str = "FrozenBN",
        pixel_mean: Optional[Sequence[float]] = None,
        pixel_std: Optional[Sequence[float]] = None,
    ):
        """
        Args:
            visual (ModifiedResNet): the tower; used as is (pass a copy to keep the original).
            out_features: which of res2..res5 to return.
            freeze_at (int): 0 = train all; 1 = freeze the stem; k = also res2..res{k}
                (detectron2's MODEL.BACKBONE.FREEZE_AT).
            norm (str): "FrozenBN" (statistics and affine fixed, as detectron2's ResNets
                fine-tune) or "BN" (trained BatchNorm).
            pixel_mean, pixel_std: the CLIP model's pixel statistics, 0-255 scale.
        """
        super().__init__()
        if not isinstance(visual, ModifiedResNet):
            raise TypeError(
                f"CLIPResNetBackbone needs an open_clip ModifiedResNet image tower, got "
                f"{type(visual).__module__}.{type(visual).__name__}"
            )
        if norm not in ("FrozenBN", "BN"):
            raise ValueError(f"norm {norm!r} (MODEL.RESNETS.NORM) must be 'FrozenBN' or 'BN'")
        bad = [f for f in out_features if f not in _STAGES]
        if bad or not out_features:
            raise ValueError(f"out_features {list(out_features)} must be among {_STAGES}")
        self.stem = nn.Sequential(
            visual.conv1, visual.bn1, visual.act1,
            visual.conv2, visual.bn2, visual.act2,
            visual.conv3, visual.bn3, visual.act3,
            visual.avgpool,
        )  # fmt: skip
        last = max(_STAGES.index(f) for f in out_features)
        self.stages = nn.ModuleList([visual.layer1, visual.layer2, visual.layer3, visual.layer4])
        self.stages = self.stages[: last + 1]  # later stages would get no gradient
        self._out_features = [f for f in _STAGES if f in out_features]
        width = visual.conv3.out_channels
        self._out_feature_channels = {f: width * 4 * 2**i for i, f in enumerate(_STAGES)}
        self._out_feature_strides = {f: 4 * 2**i for i, f in enumerate(_STAGES)}
        if norm == "FrozenBN":
            self.stem = FrozenBatchNorm2d.convert_frozen_batchnorm(self.stem)
            self.stages = FrozenBatchNorm2d.convert_frozen_batchnorm(self.stages)
        frozen = max(int(freeze_at), 0)
        if frozen:  # frozen stages keep their statistics too, as detectron2's ResNet.freeze
            self.stem = FrozenBatchNorm2d.convert_frozen_batchnorm(self.stem)
        for i in range(min(frozen - 1, len(self.stages))):
            self.stages[i] = FrozenBatchNorm2d.convert_frozen_batchnorm(self.stages[i])
        for module in [self.stem, *self.stages][:frozen]:
            module.requires_grad_(False)
        self.pixel_mean = [float(v) for v in pixel_mean] if pixel_mean is not None else None
        self.pixel_std = [float(v) for v in pixel_std] if pixel_std is not None else None

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(
                channels=self._out_feature_channels[f], stride=self._out_feature_strides[f]
            )
            for f in self._out_features
        }

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x (Tensor): (B, 3, H, W) normalised images, padded to multiples of 32 here.

        Returns:
            dict[str, Tensor]: res{k} -> (B, C_k, H' / s_k, W' / s_k), H', W' the padded size.
        """
        h, w = x.shape[-2:]
        x = self.stem(nn.functional.pad(x, (0, -w % 32, 0, -h % 32)))
        outs = {}
        for name, stage in zip(_STAGES, self.stages):
            x = stage(x)
            if name in self._out_features:
                outs[name] = x
        return outs


@BACKBONE_REGISTRY.register()
def build_clip_resnet_backbone(
    cfg, input_shape: Optional[ShapeSpec] = None, teacher: Optional[CLIPTeacher] = None
) -> CLIPResNetBackbone:
    """A CLIPResNetBackbone initialised from the CLIP teacher's ModifiedResNet (a copy).

    Reads MODEL.RESNETS.OUT_FEATURES, MODEL.RESNETS.NORM and MODEL.BACKBONE.FREEZE_AT (and
    MODEL.CLIP.* when no teacher is given).
    """
    if teacher is None:
        teacher = build_clip_teacher(cfg, device="cpu")
    visual = copy.deepcopy(teacher.model.visual).train().requires_grad_(True)
    return CLIPResNetBackbone(
        visual=visual,
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=cfg.MODEL.RESNETS.NORM,
        pixel_mean=teacher.pixel_mean.flatten().tolist(),
        pixel_std=teacher.pixel_std.flatten().tolist(),
    )
