"""The shared frozen CLIP teacher (open_clip), its builder and prompt templates."""

from .build import build_clip_teacher
from .teacher import CLIPTeacher
from .templates import get_templates

__all__ = ["CLIPTeacher", "build_clip_teacher", "get_templates"]
