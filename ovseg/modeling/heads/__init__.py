"""Decoders and heads shared by the meta-architectures."""

from .dpt import DPTDecoder

__all__ = ["DPTDecoder"]
