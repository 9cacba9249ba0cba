"""One file per method; importing this package registers them in META_ARCH_REGISTRY."""

from . import (
    freeseg,  # noqa: F401
    freeseg_prompt,  # noqa: F401
    lseg,  # noqa: F401
    maskclip,  # noqa: F401
    maskclip_plus,  # noqa: F401
    xpm,  # noqa: F401
    xpm_student,  # noqa: F401
    zegclip,  # noqa: F401
)
