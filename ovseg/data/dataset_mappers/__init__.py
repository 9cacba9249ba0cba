"""Dataset mappers: dataset dicts -> model inputs, chosen by ``INPUT.DATASET_MAPPER_NAME``."""

from .build import MAPPER_REGISTRY, build_dataset_mapper
from .color_aug import ColorAugSSD, PhotometricDistortTransform
from .episode import BinaryEpisodeMapper
from .mask_targets import (
    InstanceDatasetMapper,
    PanopticDatasetMapper,
    SemanticMaskDatasetMapper,
    mask_targets,
    semantic_mask_targets,
)
from .region_crop import RegionCropDatasetMapper
from .resize import OpenCVResizeTransform, RatioRangeResize, inference_resize, training_resize
from .semantic import SemanticDatasetMapper, transform_label, zero_shot_label_map
from .teacher_input import TeacherInputMapper
from .xpm_instance import XPMInstanceDatasetMapper

__all__ = [
    "MAPPER_REGISTRY",
    "BinaryEpisodeMapper",
    "ColorAugSSD",
    "InstanceDatasetMapper",
    "PanopticDatasetMapper",
    "SemanticMaskDatasetMapper",
    "mask_targets",
    "semantic_mask_targets",
    "OpenCVResizeTransform",
    "PhotometricDistortTransform",
    "RatioRangeResize",
    "RegionCropDatasetMapper",
    "SemanticDatasetMapper",
    "TeacherInputMapper",
    "XPMInstanceDatasetMapper",
    "build_dataset_mapper",
    "inference_resize",
    "training_resize",
    "transform_label",
    "zero_shot_label_map",
]
