"""Backbones; importing this package registers them in detectron2's BACKBONE_REGISTRY."""

from .build import build_backbone
from .clip_resnet import CLIPResNetBackbone, build_clip_resnet_backbone
from .clip_vit import CLIPViTBackbone, build_clip_vit_backbone
from .clip_vit_prompted import CLIPViTPrompted, build_clip_vit_prompted_backbone
from .resnet_deeplab import build_resnet_deeplab_backbone
from .timm_vit import TimmViTBackbone, build_timm_vit_backbone
from .torchvision_resnet import TorchvisionResNetBackbone, build_torchvision_resnet_backbone
from .vit_hooks import READOUTS, ViTFeatureBackbone, default_out_indices

__all__ = [
    "READOUTS",
    "CLIPResNetBackbone",
    "CLIPViTBackbone",
    "CLIPViTPrompted",
    "TimmViTBackbone",
    "TorchvisionResNetBackbone",
    "ViTFeatureBackbone",
    "build_backbone",
    "build_clip_resnet_backbone",
    "build_clip_vit_backbone",
    "build_clip_vit_prompted_backbone",
    "build_resnet_deeplab_backbone",
    "build_timm_vit_backbone",
    "build_torchvision_resnet_backbone",
    "default_out_indices",
]
