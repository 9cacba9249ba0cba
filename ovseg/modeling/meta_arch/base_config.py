"""What every ovseg meta-architecture reads the same way from a config
(:meth:`~ovseg.modeling.meta_arch.base.OpenVocabSegmentor.base_config`)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from detectron2.data import MetadataCatalog

from ...clip.prompt_names import get_prompt_names
from ...vocab import resolve_vocabulary
from ..test_time_aug import TestTimeAug
from ..text_embeddings_file import file_text_embeddings

__all__ = ["default_test_vocabulary", "segmentor_config"]


def default_test_vocabulary(cfg) -> Optional[Tuple[str, ...]]:
    """The names used for test inputs that carry no "vocabulary".

    MODEL.OVSEG.TEST_VOCABULARY when set, else the first test dataset's stuff_classes, else
    None (then every input must carry its own).
    """
    spec = cfg.MODEL.OVSEG.TEST_VOCABULARY
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    if spec.strip() or (meta is not None and meta.get("stuff_classes", None)):
        return resolve_vocabulary(spec, meta).names
    return None


def segmentor_config(cfg) -> Dict[str, Any]:
    """The keyword arguments every subclass reads the same way from ``cfg``: the test
    vocabulary, the training set's ignore label, the test-time protocol and the prompt
    names."""
    ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    if cfg.DATASETS.TRAIN:
        ignore = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", ignore)
    return {
        "vocabulary": default_test_vocabulary(cfg),
        "ignore_value": ignore,
        "inference_mode": cfg.TEST.INFERENCE_MODE,
        "slide_window": tuple(cfg.TEST.SLIDE_WINDOW),
        "slide_stride": tuple(cfg.TEST.SLIDE_STRIDE),
        "slide_layout": cfg.TEST.SLIDE_LAYOUT,
        "slide_windows_per_forward": cfg.TEST.SLIDE_WINDOWS_PER_FORWARD,
        "prompt_names": get_prompt_names(cfg.MODEL.CLIP.PROMPT_NAMES),
        "test_aug": TestTimeAug.from_config(cfg),
        "synonym_merge": cfg.MODEL.OVSEG.SYNONYM_MERGE,
        "background_threshold": cfg.TEST.BACKGROUND_THRESHOLD,
        "background_name": cfg.MODEL.OVSEG.BACKGROUND_CLASS,
        "text_embeddings_file": file_text_embeddings(cfg),
    }
