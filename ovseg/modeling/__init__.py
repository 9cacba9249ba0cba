from . import (
    backbone,  # noqa: F401  (registers backbones)
    meta_arch,  # noqa: F401  (registers meta-architectures)
)
