"""Official checkpoints (ZegCLIP, MaskCLIP+: mmseg ``.pth``; LSeg; FreeSeg: detectron2
``.pth``) into ovseg checkpoints, and the ImageNet ResNetV1c (open-mmlab's) the official
MaskCLIP+ students start from.

``convert_checkpoint(method, official_state, cfg)`` renames every official tensor into
ovseg's names or drops it for a stated reason (frozen CLIP weights, which ovseg takes from
MODEL.CLIP, are compared with that teacher), refuses what ovseg cannot represent, and with a
config checks the result strictly against the model it builds. ``tools/convert_checkpoint.py``
is its command line.
"""

from .command import METHODS, convert_checkpoint
from .core import ConversionError, ConversionReport, load_official, save_converted

__all__ = [
    "METHODS",
    "ConversionError",
    "ConversionReport",
    "convert_checkpoint",
    "load_official",
    "save_converted",
]
