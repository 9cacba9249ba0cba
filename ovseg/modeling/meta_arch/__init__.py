"""One file per method; importing this package registers them in META_ARCH_REGISTRY."""
