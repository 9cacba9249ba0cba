"""Reusable mask-classification machinery (Mask2Former family): the deformable-attention
pixel decoder, the masked-attention transformer decoder with a pluggable class head, the
Hungarian matcher, the set criterion and the semantic / panoptic / instance inference.
Importing the package registers ``MSDeformAttnPixelDecoder`` in detectron2's
``SEM_SEG_HEADS_REGISTRY`` (MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME)."""

from .criterion import MaskClassificationCriterion, dice_loss, prepare_targets, sigmoid_focal_loss
from .inference import (
    freeseg_instance_inference,
    instance_inference,
    panoptic_inference,
    resize_instances,
    resize_panoptic,
    semantic_inference,
)
from .matcher import HungarianMatcher
from .ms_deform_attn import MSDeformAttn, ms_deform_attn_core
from .pixel_decoder import MSDeformAttnPixelDecoder, build_pixel_decoder
from .position_encoding import PositionEmbeddingSine
from .transformer_decoder import MLP, LinearClassHead, MaskedAttentionDecoder, TextCosineClassHead

__all__ = [
    "MLP",
    "HungarianMatcher",
    "LinearClassHead",
    "MSDeformAttn",
    "MSDeformAttnPixelDecoder",
    "MaskClassificationCriterion",
    "MaskedAttentionDecoder",
    "PositionEmbeddingSine",
    "TextCosineClassHead",
    "build_pixel_decoder",
    "dice_loss",
    "freeseg_instance_inference",
    "instance_inference",
    "ms_deform_attn_core",
    "panoptic_inference",
    "prepare_targets",
    "resize_instances",
    "resize_panoptic",
    "semantic_inference",
    "sigmoid_focal_loss",
]
