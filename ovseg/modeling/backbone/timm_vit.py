"""The LSeg paper's image encoder: a timm ViT (e.g. ViT-L/16 384) as a detectron2 Backbone.

timm is optional: it is imported only when this backbone is built, and weights come from
a local file unless MODEL.VIT_BACKBONE.TIMM_PRETRAINED is "timm" (timm's own download).
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from .vit_hooks import ViTFeatureBackbone, check_out_indices

__all__ = ["TimmViTBackbone", "build_timm_vit_backbone"]


class TimmViTBackbone(ViTFeatureBackbone):
    """Hooked blocks of a timm ``VisionTransformer`` (dynamic image size), trainable."""

    def __init__(
        self,
        *,
        model: nn.Module,
        out_indices: Sequence[int] = (),
        readout: str = "project",
        freeze: bool = False,
        out_features: Optional[Sequence[str]] = None,
    ):
        """
        Args:
            model (nn.Module): a timm VisionTransformer created with ``dynamic_img_size=True``.
            out_indices: 0-based hooked blocks; () = four evenly spaced ending at the last.
            readout (str): "ignore", "add" or "project".
            freeze (bool): keep the ViT's weights fixed (the readouts still train).
            out_features: names of the maps; default res2, res3, ...
        """
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "blocks"):
            raise TypeError(
                f"{type(model).__name__} is not a timm VisionTransformer with "
                "forward_intermediates (timm >= 1.0)"
            )
        out_indices = check_out_indices(out_indices, len(model.blocks))
        patch = model.patch_embed.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        pp = getattr(model, "pretrained_cfg", None) or {}
        mean, std = pp.get("mean"), pp.get("std")
        super().__init__(
            width=model.embed_dim,
            patch_size=int(patch),
            out_indices=out_indices,
            readout=readout,
            num_prefix=int(model.num_prefix_tokens),
            out_features=out_features,
            pixel_mean=[255.0 * v for v in mean] if mean else None,
            pixel_std=[255.0 * v for v in std] if std else None,
        )
        self._unique = sorted(set(out_indices))
        # drop the blocks after the last hook, the final norm and the head: all unused
        model.prune_intermediate_layers(self._unique, prune_norm=True, prune_head=True)
        self.vit = model
        self.vit.requires_grad_(not freeze)

    def tokens(self, x: Tensor) -> List[Tensor]:
        maps = self.vit.forward_intermediates(
            x,
            indices=self._unique,
            return_prefix_tokens=True,
            norm=False,
            intermediates_only=True,
            output_fmt="NCHW",
        )
        by_index = {
            i: torch.cat([prefix, spatial.flatten(2).transpose(1, 2)], dim=1)
            for i, (spatial, prefix) in zip(self._unique, maps)
        }
        return [by_index[i] for i in self.out_indices]


@BACKBONE_REGISTRY.register()
def build_timm_vit_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> TimmViTBackbone:
    """A TimmViTBackbone from MODEL.VIT_BACKBONE.{TIMM_MODEL, TIMM_PRETRAINED, ...}."""
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            "MODEL.BACKBONE.NAME=build_timm_vit_backbone needs timm: pip install timm"
        ) from e
    vcfg = cfg.MODEL.VIT_BACKBONE
    weights = vcfg.TIMM_PRETRAINED
    if weights and weights != "timm" and not os.path.isfile(os.path.expanduser(weights)):
        raise FileNotFoundError(
            f"MODEL.VIT_BACKBONE.TIMM_PRETRAINED: weights file {weights!r} does not exist; give "
            "a local timm checkpoint, 'timm' to let timm download them, or '' for random init"
        )
    model = timm.create_model(
        vcfg.TIMM_MODEL, pretrained=weights == "timm", dynamic_img_size=True, num_classes=0
    )
    if weights and weights != "timm":
        # the classifier head of ImageNet checkpoints is dropped (num_classes=0)
        result = timm.models.load_checkpoint(model, os.path.expanduser(weights), strict=False)
        missing = list(getattr(result, "missing_keys", []) or [])
        if missing:
            raise ValueError(
                f"MODEL.VIT_BACKBONE.TIMM_PRETRAINED={weights!r} lacks {len(missing)} weights of "
                f"{vcfg.TIMM_MODEL!r} (e.g. {missing[:3]}); is it a checkpoint of that model?"
            )
    return TimmViTBackbone(
        model=model, out_indices=vcfg.OUT_INDICES, readout=vcfg.READOUT, freeze=vcfg.FREEZE
    )
