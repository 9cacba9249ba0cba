from . import (
    backbone,  # noqa: F401  (registers backbones)
    mask_classification,  # noqa: F401  (registers the pixel decoder)
    meta_arch,  # noqa: F401  (registers meta-architectures)
)
