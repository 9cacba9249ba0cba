from . import datasets  # noqa: F401  (registers the builtin datasets on import)
from .dataset_mappers import MAPPER_REGISTRY, build_dataset_mapper  # noqa: F401
