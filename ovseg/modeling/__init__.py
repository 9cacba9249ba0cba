from . import meta_arch  # noqa: F401  (registers meta-architectures)
