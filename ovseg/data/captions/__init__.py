"""XPM's caption side: the nouns a caption names (:mod:`.nouns`), XPM's LVIS caption
vocabulary (:mod:`.lvis`) and what a config says about them (:mod:`.settings`)."""

from .nouns import (
    COCO_LVIS_SYNONYMS,
    EXTRA_SYNONYMS,
    CaptionNounMatcher,
    CaptionNouns,
    lemmatize_phrase,
)

__all__ = [
    "COCO_LVIS_SYNONYMS",
    "EXTRA_SYNONYMS",
    "CaptionNounMatcher",
    "CaptionNouns",
    "lemmatize_phrase",
]
