"""ovseg's dense heads and decoders; importing this package registers them in
DENSE_HEAD_REGISTRY (MODEL.DENSE_HEAD.NAME)."""

from .build import DENSE_HEAD_REGISTRY, build_dense_head
from .deeplab import DeepLabV2Head, DeepLabV3PlusHead
from .dpt import DPTDecoder

__all__ = [
    "DENSE_HEAD_REGISTRY",
    "DPTDecoder",
    "DeepLabV2Head",
    "DeepLabV3PlusHead",
    "build_dense_head",
]
