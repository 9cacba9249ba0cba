"""Build a registered backbone, handing the shared CLIP teacher to builders that take it."""

from __future__ import annotations

import inspect
from typing import Optional

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...clip import CLIPTeacher

__all__ = ["build_backbone"]


def build_backbone(
    cfg, input_shape: Optional[ShapeSpec] = None, teacher: Optional[CLIPTeacher] = None
) -> Backbone:
    """detectron2's ``build_backbone``, plus: builders with a ``teacher`` keyword get the
    shared teacher (so CLIP-initialised backbones copy it instead of loading CLIP twice).

    Args:
        cfg (CfgNode): MODEL.BACKBONE.NAME names a builder in BACKBONE_REGISTRY.
        input_shape (ShapeSpec): default: ``len(cfg.MODEL.PIXEL_MEAN)`` channels.
        teacher (CLIPTeacher, optional): the model's CLIP teacher.

    Returns:
        Backbone
    """
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    try:
        builder = BACKBONE_REGISTRY.get(name)
    except KeyError:
        raise KeyError(
            f"MODEL.BACKBONE.NAME={name!r} is not a registered backbone; known: "
            f"{sorted(k for k, _ in BACKBONE_REGISTRY)}"
        ) from None
    kwargs = {}
    if teacher is not None and "teacher" in inspect.signature(builder).parameters:
        kwargs["teacher"] = teacher
    backbone = builder(cfg, input_shape, **kwargs)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone builder {name!r} returned {type(backbone).__name__}")
    return backbone
