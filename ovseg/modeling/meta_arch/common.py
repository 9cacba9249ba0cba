"""Helpers every open-vocabulary meta-architecture needs: which class names an input is
scored over, and grouping inputs that can share one forward."""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

from ...vocab import resolve_vocabulary

__all__ = ["default_test_vocabulary", "group_inputs", "input_vocabulary"]


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


def input_vocabulary(inp: dict, default: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    """The class names an input's scores (or labels) refer to.

    Args:
        inp (dict): a model input; its "vocabulary" (list[str]) wins when present.
        default: names for inputs without one; None = such inputs are an error.

    Returns:
        tuple[str, ...]: K names.
    """
    names = inp.get("vocabulary")
    where = f"Input {inp.get('file_name', '')!r}"
    if names is None:
        if default is None:
            raise ValueError(
                f"{where} carries no 'vocabulary' and the model has no default; set "
                "MODEL.OVSEG.TEST_VOCABULARY or DATASETS.TEST, or use ovseg's dataset mappers"
            )
        return tuple(default)
    if isinstance(names, str) or len(names) == 0:
        raise ValueError(f"{where}: 'vocabulary' must be a non-empty list of names, got {names!r}")
    return tuple(names)


def group_inputs(keys: Sequence[Hashable]) -> Dict[Hashable, List[int]]:
    """Indices of equal keys, in order of first appearance (e.g. key = (size, vocabulary))."""
    groups: Dict[Hashable, List[int]] = OrderedDict()
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups
