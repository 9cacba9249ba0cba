"""One file per method; importing this package registers them in META_ARCH_REGISTRY."""

from . import maskclip  # noqa: F401
