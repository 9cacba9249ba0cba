"""ovseg: open-vocabulary segmentation by distilling CLIP into dense predictors.

Importing the package registers every dataset, dataset mapper, meta-architecture and
evaluator with detectron2's registries.
"""

import warnings

with warnings.catch_warnings():
    # fvcore and detectron2 script functions at import, which this torch calls deprecated:
    # every tool would open with that FutureWarning about code that is not ovseg's
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    import fvcore.nn  # noqa: F401

    import detectron2.modeling  # noqa: F401

from . import (  # noqa: E402
    data,  # noqa: F401  (registers datasets and mappers)
    evaluation,  # noqa: F401
    modeling,  # noqa: F401  (registers meta-architectures and backbones)
)
from .config import add_ovseg_config  # noqa: E402

__all__ = ["Prediction", "Predictor", "add_ovseg_config"]


def __getattr__(name: str):
    # the Python API (ovseg.api) is imported on first use, so "import ovseg" stays as cheap
    if name in ("Predictor", "Prediction"):
        from . import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'ovseg' has no attribute {name!r}")


__version__ = "0.1.0"
