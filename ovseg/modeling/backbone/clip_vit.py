"""A trainable copy of the CLIP teacher's ViT image tower as a detectron2 Backbone."""

from __future__ import annotations

import copy
from typing import List, Optional, Sequence

from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from ...clip import CLIPTeacher, build_clip_teacher
from ...clip.dense import check_batch_first, dense_stride, vit_tokens
from .vit_hooks import ViTFeatureBackbone, check_out_indices

__all__ = ["CLIPViTBackbone", "build_clip_vit_backbone"]


class CLIPViTBackbone(ViTFeatureBackbone):
    """Hooked blocks of an open_clip ``VisionTransformer``, trainable.

    Keeps the patch embedding, class and positional embeddings, ``ln_pre`` and the blocks up
    to the last hooked one; the rest of the tower (later blocks, ``ln_post``, projection,
    pooling) is dropped, so every parameter gets a gradient. Positional embeddings are
    resized bicubically to each input's patch grid.
    """

    def __init__(
        self,
        *,
        visual: VisionTransformer,
        out_indices: Sequence[int] = (),
        readout: str = "project",
        freeze: bool = False,
        out_features: Optional[Sequence[str]] = None,
        pixel_mean: Optional[Sequence[float]] = None,
        pixel_std: Optional[Sequence[float]] = None,
    ):
        """
        Args:
            visual (VisionTransformer): the tower; used as is (pass a copy to keep the
                original untouched).
            out_indices: 0-based blocks whose outputs become feature maps; () = four evenly
                spaced ending at the last block.
            readout (str): "ignore", "add" or "project" (see :class:`Readout`).
            freeze (bool): keep the tower's own weights fixed (the readouts still train).
            out_features: names of the maps; default res2, res3, ...
            pixel_mean, pixel_std: the CLIP model's pixel statistics, 0-255 scale.
        """
        if not isinstance(visual, VisionTransformer):
            raise TypeError(
                f"CLIPViTBackbone needs an open_clip VisionTransformer image tower, got "
                f"{type(visual).__module__}.{type(visual).__name__}; use a ResNet backbone "
                "(build_resnet_backbone) for other CLIP towers"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise NotImplementedError("ViT towers with an attentional pooler are not supported")
        check_batch_first(visual)
        blocks = list(visual.transformer.resblocks)
        out_indices = check_out_indices(out_indices, len(blocks))
        super().__init__(
            width=visual.conv1.out_channels,
            patch_size=dense_stride(visual),
            out_indices=out_indices,
            readout=readout,
            num_prefix=1,
            out_features=out_features,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
        )
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.resblocks = nn.ModuleList(blocks[: out_indices[-1] + 1])
        self.grid_size = tuple(int(g) for g in visual.grid_size)
        tower = [self.conv1, self.ln_pre, self.resblocks]
        for p in [self.class_embedding, self.positional_embedding]:
            p.requires_grad_(not freeze)
        for m in tower:
            m.requires_grad_(not freeze)

    def tokens(self, x: Tensor) -> List[Tensor]:
        x, _ = vit_tokens(self, x)
        outs = []
        wanted = set(self.out_indices)
        for i, block in enumerate(self.resblocks):
            x = block(x)
            if i in wanted:
                outs.extend([x] * self.out_indices.count(i))
        return outs


@BACKBONE_REGISTRY.register()
def build_clip_vit_backbone(
    cfg, input_shape: Optional[ShapeSpec] = None, teacher: Optional[CLIPTeacher] = None
) -> CLIPViTBackbone:
    """A CLIPViTBackbone initialised from the CLIP teacher's image tower (a trainable copy).

    Args:
        cfg (CfgNode): reads MODEL.CLIP.* (when no teacher is given) and MODEL.VIT_BACKBONE.*.
        input_shape (ShapeSpec): unused; images are RGB.
        teacher (CLIPTeacher, optional): the shared teacher, whose tower is copied; without
            it one is built from MODEL.CLIP (loading the weights again).

    Returns:
        CLIPViTBackbone
    """
    if teacher is None:
        teacher = build_clip_teacher(cfg, device="cpu")
    visual = copy.deepcopy(teacher.model.visual)
    visual.train()
    vcfg = cfg.MODEL.VIT_BACKBONE
    return CLIPViTBackbone(
        visual=visual,
        out_indices=vcfg.OUT_INDICES,
        readout=vcfg.READOUT,
        freeze=vcfg.FREEZE,
        pixel_mean=teacher.pixel_mean.flatten().tolist(),
        pixel_std=teacher.pixel_std.flatten().tolist(),
    )
