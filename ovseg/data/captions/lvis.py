"""XPM's caption vocabulary: the 1203 LVIS v1 categories with their synonyms.

Officially (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423, paths in that repository) the
caption parser looks for every synonym of every LVIS category
(``maskrcnn_benchmark/data/datasets/helper/parser.py:28-53``), a noun's class is its
category's 0-based id (``parser.py:34``, ``id - 1``), and the student's pseudo pass
classifies over the LVIS names (``modeling/detector/st_generalized_rcnn.py:71-75, 329-330``),
each name normalised by ``normalize_class_names`` (``parser.py:10-21``: ``_ / ( )`` to spaces,
lower case). The list is detectron2's ``lvis_v1_categories.py``, the same 1203 entries
(ids, names, synonyms) as the official ``helper/lvis_v1_categories.py``.

The official quirk: maskrcnn_benchmark's label 0 is the background, and the LVIS vocabulary
has no background entry, so its id 0, "aerosol can", is the background class of the pseudo
pass: its pseudo instances train as background and its text embedding gives the background
logit (``st_generalized_rcnn.py:257-258, 329-330``; ``roi_heads/box_head/loss.py:156, 172``).
``MODEL.XPM.LVIS_BACKGROUND_QUIRK`` reproduces it.
"""

from __future__ import annotations

import functools
from typing import Dict, Tuple

__all__ = [
    "CAPTION_VOCABULARIES",
    "LVIS_BACKGROUND_NAME",
    "check_caption_vocabulary",
    "lvis_synonyms",
    "lvis_vocabulary",
    "normalize_lvis_name",
]

# MODEL.XPM.CAPTION_VOCABULARY: the training vocabulary's names, or XPM's LVIS categories
CAPTION_VOCABULARIES = ("train", "lvis")

# the name of LVIS id 0 (1-based id 1), the official pseudo pass's background
LVIS_BACKGROUND_NAME = "aerosol can"


def normalize_lvis_name(name: str) -> str:
    """An LVIS name as the official text (``parser.py:10-21``), runs of spaces made one:
    ``"car_(automobile)"`` -> ``"car automobile"``."""
    for ch in "_/()":
        name = name.replace(ch, " ")
    return " ".join(name.lower().split())


def check_caption_vocabulary(kind: str) -> str:
    """``kind`` if it is one of :data:`CAPTION_VOCABULARIES`, else a ValueError."""
    if kind not in CAPTION_VOCABULARIES:
        raise ValueError(
            f"MODEL.XPM.CAPTION_VOCABULARY={kind!r} is not one of {list(CAPTION_VOCABULARIES)}"
        )
    return kind


@functools.lru_cache(maxsize=1)
def _categories() -> Tuple[dict, ...]:
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    cats = tuple(sorted(LVIS_CATEGORIES, key=lambda c: c["id"]))
    if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
        raise RuntimeError("detectron2's LVIS v1 categories do not have ids 1..N; reinstall it")
    return cats


def lvis_vocabulary() -> Tuple[str, ...]:
    """The 1203 LVIS names in id order (index = official 0-based id), normalised."""
    return tuple(normalize_lvis_name(c["name"]) for c in _categories())


def lvis_synonyms() -> Dict[str, Tuple[str, ...]]:
    """Normalised LVIS name -> its raw synonyms (``"car_(automobile)"``, ...), in id order."""
    return {normalize_lvis_name(c["name"]): tuple(c["synonyms"]) for c in _categories()}
