"""Dataset mappers: dataset dicts -> model inputs, chosen by ``INPUT.DATASET_MAPPER_NAME``."""

from .build import MAPPER_REGISTRY, build_dataset_mapper
from .color_aug import ColorAugSSD, PhotometricDistortTransform
from .episode import BinaryEpisodeMapper
from .resize import RatioRangeResize, training_resize
from .semantic import SemanticDatasetMapper, transform_label, zero_shot_label_map
from .teacher_input import TeacherInputMapper

__all__ = [
    "MAPPER_REGISTRY",
    "BinaryEpisodeMapper",
    "ColorAugSSD",
    "PhotometricDistortTransform",
    "RatioRangeResize",
    "SemanticDatasetMapper",
    "TeacherInputMapper",
    "build_dataset_mapper",
    "training_resize",
    "transform_label",
    "zero_shot_label_map",
]
