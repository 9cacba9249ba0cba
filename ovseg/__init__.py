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

__all__ = ["Prediction", "Predictor", "add_ovseg_config"]


def __getattr__(name: str):
    # the Python API (ovseg.api) is imported on first use, so "import ovseg" stays as cheap
    if name in ("Predictor", "Prediction"):
        from . import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'ovseg' has no attribute {name!r}")


__version__ = "0.1.0"
