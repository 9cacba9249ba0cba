"""One file per method; importing this package registers them in META_ARCH_REGISTRY."""

from . import (
    lseg,  # noqa: F401
    maskclip,  # noqa: F401
    maskclip_plus,  # noqa: F401
    zegclip,  # noqa: F401
)
