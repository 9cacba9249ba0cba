"""Caption nouns for XPM's pseudo-labels: class names found in captions, without spaCy.

Follows XPM's caption parser (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423,
``maskrcnn_benchmark/data/datasets/helper/parser.py:23-74``), re-written:

- every class phrase (a class name or one of its synonyms) is lemmatised word by word; a
  parenthesised qualifier ends the phrase (``"car_(automobile)"`` -> ``"car"``, parser.py:44);
- a caption is lower-cased, split into words and lemmatised; a phrase matches where its
  lemmas appear as whole consecutive words (parser.py:70: ``" s "`` in the space-joined
  lemmas, or at either end), so ``"cat"`` is not found in ``"catch"``;
- all captions of an image are parsed, no part-of-speech filter, and each distinct matched
  phrase is kept once with its class (``coco_cap_det.py:131-140``);
- :meth:`CaptionNounMatcher.lvis` is the parser's own vocabulary, all 1203 LVIS categories
  (:mod:`.lvis`); the others match a training vocabulary's names (COCO's 65, the toy world's).

spaCy's English model is not on PyPI, so words are lemmatised by ``lemminflect`` (its data
ships in the wheel). spaCy picks one lemma per word from its tagger; without a tagger a
caption word here matches any of its noun or verb lemmas, so ``"tied"`` gives ``"tie"`` (as
spaCy's verb lemma does officially) and ``"untied"`` gives ``"untie"``, not ``"tie"``. Words
are split on every non-alphanumeric character on both sides, so ``"double-decker"`` matches
``"double decker"`` too (spaCy splits the caption's hyphen but the parser joins the
synonym's, parser.py:48, so officially a hyphenated synonym never matches).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "COCO_LVIS_SYNONYMS",
    "EXTRA_SYNONYMS",
    "CaptionNounMatcher",
    "CaptionNouns",
    "lemmatize_phrase",
]

_WORD = re.compile(r"[a-z0-9]+")

# COCO thing name -> the synonyms of the LVIS category XPM's parser reads for it
# (``helper/lvis_v1_categories.py``, matched by WordNet synset; parentheses as the parser).
COCO_LVIS_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "person": ("person", "baby", "child", "boy", "girl", "man", "woman", "human"),
    "bicycle": ("bicycle", "bike_(bicycle)"),
    "car": ("car_(automobile)", "auto_(automobile)", "automobile"),
    "motorcycle": ("motorcycle",),
    "airplane": ("airplane", "aeroplane"),
    "bus": ("bus_(vehicle)", "autobus", "charabanc", "double-decker", "motorbus", "motorcoach"),
    "train": ("train_(railroad_vehicle)", "railroad_train"),
    "truck": ("truck",),
    "boat": ("boat", "ship_(boat)"),
    "traffic light": ("traffic_light",),
    "fire hydrant": ("fireplug", "fire_hydrant", "hydrant"),
    "stop sign": ("stop_sign",),
    "parking meter": ("parking_meter",),
    "bench": ("bench",),
    "bird": ("bird",),
    "cat": ("cat",),
    "dog": ("dog",),
    "horse": ("horse",),
    "sheep": ("sheep",),
    "cow": ("cow",),
    "elephant": ("elephant",),
    "bear": ("bear",),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "knapsack", "packsack", "rucksack", "haversack"),
    "umbrella": ("umbrella",),
    "handbag": ("handbag", "purse", "pocketbook"),
    "tie": ("necktie", "tie_(necktie)"),
    "suitcase": ("suitcase", "baggage", "luggage"),
    "frisbee": ("frisbee",),
    "skis": ("ski",),
    "snowboard": ("snowboard",),
    "sports ball": ("ball",),
    "kite": ("kite",),
    "baseball bat": ("baseball_bat",),
    "baseball glove": ("baseball_glove", "baseball_mitt"),
    "skateboard": ("skateboard",),
    "surfboard": ("surfboard",),
    "tennis racket": ("tennis_racket",),
    "bottle": ("bottle",),
    "wine glass": ("wineglass",),
    "cup": ("cup",),
    "fork": ("fork",),
    "knife": ("knife",),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich",),
    "orange": ("orange_(fruit)",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("sausage",),
    "pizza": ("pizza",),
    "donut": ("doughnut", "donut"),
    "cake": ("cake",),
    "chair": ("chair",),
    "couch": ("sofa", "couch", "lounge"),
    "potted plant": ("flowerpot",),
    "bed": ("bed",),
    "dining table": ("dining_table",),
    "toilet": ("toilet",),
    "tv": ("television_set", "tv", "tv_set"),
    "laptop": ("laptop_computer", "notebook_computer"),
    "mouse": ("mouse_(computer_equipment)", "computer_mouse"),
    "remote": ("remote_control",),
    "keyboard": ("computer_keyboard", "keyboard_(computer)"),
    "cell phone": (
        "cellular_telephone",
        "cellular_phone",
        "cellphone",
        "mobile_phone",
        "smart_phone",
    ),  # fmt: skip
    "microwave": ("microwave_oven",),
    "oven": ("oven",),
    "toaster": ("toaster",),
    "sink": ("sink",),
    "refrigerator": ("refrigerator",),
    "book": ("book",),
    "clock": ("clock", "timepiece", "timekeeper"),
    "vase": ("vase",),
    "scissors": ("scissors",),
    "teddy bear": ("teddy_bear",),
    "hair drier": ("hair_dryer",),
    "toothbrush": ("toothbrush",),
}
# Ours, not the official lists: words COCO captions use for a class that LVIS lacks
# ("television" alone, "people"); off with ``extras=False``.
EXTRA_SYNONYMS: Dict[str, Tuple[str, ...]] = {"tv": ("television",), "person": ("people",)}


@functools.lru_cache(maxsize=65536)
def _word_lemmas(word: str) -> FrozenSet[str]:
    """Every lemma a caption word may stand for: its noun and verb lemmas, else itself."""
    from lemminflect import getAllLemmas, getLemma

    found = getAllLemmas(word)
    lemmas = {lemma for pos in ("NOUN", "VERB", "AUX") for lemma in found.get(pos, ())}
    lemmas.add(getLemma(word, "NOUN", lemmatize_oov=True)[0])
    return frozenset(lemmas)


@functools.lru_cache(maxsize=65536)
def _noun_lemma(word: str) -> str:
    from lemminflect import getLemma

    return getLemma(word, "NOUN", lemmatize_oov=True)[0]


def lemmatize_phrase(phrase: str) -> Tuple[str, ...]:
    """A class phrase as the parser compares it: noun lemmas, up to a ``"("`` qualifier.

    Args:
        phrase (str): e.g. ``"Teddy Bears"``, ``"mouse_(computer_equipment)"``.

    Returns:
        tuple[str, ...]: e.g. ``("teddy", "bear")``, ``("mouse",)``.
    """
    head = phrase.lower().replace("_", " ").split("(", 1)[0]
    return tuple(_noun_lemma(w) for w in _WORD.findall(head))


@dataclass(frozen=True)
class CaptionNouns:
    """The class phrases found in one image's captions.

    Attributes:
        nouns: each distinct matched phrase (space-joined lemmas) with its class id, in the
            order first found; two phrases of one class ("man", "woman") are both kept.
    """

    nouns: Tuple[Tuple[str, int], ...]

    @property
    def class_ids(self) -> Tuple[int, ...]:
        """The distinct class ids found, ascending."""
        return tuple(sorted({c for _, c in self.nouns}))


class CaptionNounMatcher:
    """Finds class names and their synonyms in captions by whole-word lemma matching."""

    def __init__(
        self,
        class_names: Sequence[str],
        synonyms: Optional[Mapping[str, Sequence[str]]] = None,
        *,
        exclude: Sequence[str] = (),
        names_are_phrases: bool = True,
        on_conflict: str = "error",
    ):
        """
        Args:
            class_names: the label space; a match's class id is the index of its name here.
            synonyms: class name -> further phrases naming it; every key must be one of
                ``class_names``.
            exclude: class names never matched (e.g. ``"background"``).
            names_are_phrases: each class's own name is a phrase too. Off, a class is
                found by its synonyms only, as XPM's parser reads the LVIS lists alone
                (``parser.py:28-53``): COCO's "laptop" is not among its
                ("laptop_computer", "notebook_computer").
            on_conflict (str): a phrase naming two classes is an ``"error"``, or names the
                ``"last"`` of them, as the parser's lookup table keeps the last category
                written (``parser.py:53``: LVIS "glass" names "spectacles", not "glass
                (drink container)").
        """
        if on_conflict not in ("error", "last"):
            raise ValueError(f"on_conflict {on_conflict!r} is not 'error' or 'last'")
        names = list(class_names)
        stray = sorted(set(synonyms or {}) - set(names))
        if stray:
            raise ValueError(
                f"synonyms name classes {stray} that are not in the class list; "
                "give synonyms only for the matcher's class names"
            )
        bad = sorted(set(exclude) - set(names))
        if bad:
            raise ValueError(f"exclude names {bad} that are not in the class list {names}")
        table: Dict[Tuple[str, ...], int] = {}
        for cid, name in enumerate(names):
            if name in exclude:
                continue
            own = (name,) if names_are_phrases else ()
            phrases = (*own, *(synonyms or {}).get(name, ()))
            if not phrases:
                raise ValueError(
                    f"class {name!r} has no phrase: give it synonyms or keep names_are_phrases"
                )
            for phrase in phrases:
                lemmas = lemmatize_phrase(phrase)
                if not lemmas:
                    raise ValueError(f"class {name!r}: phrase {phrase!r} has no words")
                other = table.setdefault(lemmas, cid)
                if other != cid and on_conflict == "last":
                    table[lemmas] = cid
                elif other != cid:
                    raise ValueError(
                        f"phrase {phrase!r} names both {names[other]!r} and {name!r}; "
                        "a phrase may name one class only: drop it from one synonym list"
                    )
        self.class_names = tuple(names)
        self._phrases = table
        # first lemma -> its phrases, so a caption is scanned once, not once per phrase
        self._by_first: Dict[str, List[Tuple[Tuple[str, ...], int]]] = {}
        for lemmas, cid in table.items():
            self._by_first.setdefault(lemmas[0], []).append((lemmas, cid))

    @classmethod
    def coco(cls, class_names: Sequence[str], *, extras: bool = True) -> CaptionNounMatcher:
        """A matcher over COCO thing names (e.g. the 65 of the 48/17 split) with XPM's
        LVIS synonyms. With ``extras`` (ours) the COCO names themselves ("laptop", "remote",
        "microwave" are not in their LVIS lists) and :data:`EXTRA_SYNONYMS` are phrases too;
        without, the LVIS lists alone, as XPM's parser."""
        unknown = sorted(set(class_names) - set(COCO_LVIS_SYNONYMS))
        if unknown:
            raise ValueError(f"{unknown} are not COCO thing names: {sorted(COCO_LVIS_SYNONYMS)}")
        table = {n: list(COCO_LVIS_SYNONYMS[n]) for n in class_names}
        for name, more in EXTRA_SYNONYMS.items() if extras else ():
            if name in table:
                table[name] += more
        return cls(class_names, table, names_are_phrases=extras)

    @classmethod
    def coco65(cls, *, extras: bool = True) -> CaptionNounMatcher:
        """OVR-CNN's COCO 48/17 classes, ids in ``COCO_48_17_CATEGORIES`` order."""
        from ovseg.data.datasets.categories import COCO_48_17_CATEGORIES

        return cls.coco([c["name"] for c in COCO_48_17_CATEGORIES], extras=extras)

    @classmethod
    def toy(cls) -> CaptionNounMatcher:
        """The toy world: ids are its label values (0 background, never matched)."""
        from ovseg.data.datasets.toy_world import CLASSES

        return cls(CLASSES, exclude=("background",))

    @classmethod
    def lvis(cls) -> CaptionNounMatcher:
        """XPM's parser vocabulary: the 1203 LVIS categories, ids in LVIS id order (0-based),
        each found by its synonyms alone, a phrase of two categories naming the later one
        (``parser.py:28-53``)."""
        from .lvis import lvis_synonyms

        table = lvis_synonyms()
        return cls(list(table), table, names_are_phrases=False, on_conflict="last")

    @property
    def phrases(self) -> Dict[Tuple[str, ...], int]:
        """Every matched phrase (its lemmas) -> class id; excluded classes have none."""
        return dict(self._phrases)

    def match_caption(self, caption: str) -> List[Tuple[str, int]]:
        """Every (phrase, class id) whose lemmas occur as whole words in ``caption``."""
        if not isinstance(caption, str):
            raise TypeError(f"a caption must be a string, got {type(caption).__name__}")
        words = [_word_lemmas(w) for w in _WORD.findall(caption.lower())]
        first: Dict[Tuple[str, ...], Tuple[int, str, int]] = {}
        for i, lemmas in enumerate(words):
            for lemma in lemmas:
                for phrase, cid in self._by_first.get(lemma, ()):
                    k = len(phrase)
                    if phrase in first or i + k > len(words):
                        continue
                    if all(phrase[j] in words[i + j] for j in range(1, k)):
                        first[phrase] = (i, " ".join(phrase), cid)
        return [(p, c) for _, p, c in sorted(first.values())]

    def __call__(self, captions: Sequence[str]) -> CaptionNouns:
        """The class phrases of all of an image's captions (each distinct phrase once).

        Args:
            captions: the image's captions (all of them, as XPM parses all five).
        """
        if isinstance(captions, str):
            raise TypeError("pass a list of captions, not one string")
        nouns: Dict[str, int] = {}
        for caption in captions:
            for phrase, cid in self.match_caption(caption):
                nouns.setdefault(phrase, cid)
        return CaptionNouns(tuple(nouns.items()))
