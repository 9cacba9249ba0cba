"""ovseg: open-vocabulary segmentation by distilling CLIP into dense predictors.

Importing the package registers every dataset, dataset mapper, meta-architecture and
evaluator with detectron2's registries.
"""

from . import (
    data,  # noqa: F401  (registers datasets and mappers)
    evaluation,  # noqa: F401
    modeling,  # noqa: F401  (registers meta-architectures and backbones)
)
from .config import add_ovseg_config

__all__ = ["add_ovseg_config"]
__version__ = "0.1.0"
