"""ovseg's dense heads, by name: backbone features -> a (B, C, h, w) embedding map.

Unlike detectron2's ``SEM_SEG_HEADS_REGISTRY`` (heads that compute their own loss from
targets), a dense head only maps features: the meta-architecture classifies the map against
text embeddings and owns the loss. Every registered head is built as
``cls(cfg, input_shape, out_channels=C)``.
"""

from __future__ import annotations

from typing import Dict

from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

__all__ = ["DENSE_HEAD_REGISTRY", "build_dense_head"]

DENSE_HEAD_REGISTRY = Registry("OVSEG_DENSE_HEAD")
DENSE_HEAD_REGISTRY.__doc__ = """
Dense heads: ``cls(cfg, input_shape: dict[str, ShapeSpec], out_channels: int)``, a module
whose ``forward(features: dict[str, Tensor]) -> Tensor`` gives (B, out_channels, h, w); no
loss. Chosen by MODEL.DENSE_HEAD.NAME.
"""


def build_dense_head(cfg, input_shape: Dict[str, ShapeSpec], out_channels: int) -> nn.Module:
    """The head named by ``MODEL.DENSE_HEAD.NAME``, asked for ``out_channels`` outputs.

    Args:
        cfg (CfgNode): the config.
        input_shape (dict[str, ShapeSpec]): the backbone's output shapes.
        out_channels (int): channels of the output map (a student: the CLIP embedding size).

    Returns:
        nn.Module: ``forward(features) -> (B, out_channels, h, w)``.
    """
    name = cfg.MODEL.DENSE_HEAD.NAME
    try:
        head_cls = DENSE_HEAD_REGISTRY.get(name)
    except KeyError:
        raise KeyError(
            f"MODEL.DENSE_HEAD.NAME={name!r} is not a registered dense head; known: "
            f"{sorted(k for k, _ in DENSE_HEAD_REGISTRY)}"
        ) from None
    return head_cls(cfg, input_shape, out_channels=out_channels)
