"""Dataset mappers: dataset dicts -> model inputs, chosen by ``INPUT.DATASET_MAPPER_NAME``."""

from .build import MAPPER_REGISTRY, build_dataset_mapper
from .color_aug import ColorAugSSD, PhotometricDistortTransform
from .semantic import SemanticDatasetMapper, zero_shot_label_map

__all__ = [
    "MAPPER_REGISTRY",
    "ColorAugSSD",
    "PhotometricDistortTransform",
    "SemanticDatasetMapper",
    "build_dataset_mapper",
    "zero_shot_label_map",
]
