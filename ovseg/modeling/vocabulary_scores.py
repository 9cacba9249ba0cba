"""What a vocabulary's words do to the scores: synonyms, an augmented vocabulary, background.

- **Synonyms** (``"pickup truck, truck"``, ADE's ``"road, route"``; :func:`ovseg.vocab.
  split_synonyms`): with ``"max"`` a class scores the maximum over its synonyms' scores (each
  synonym a class of its own for the model, then merged: FC-CLIP's and ODISE's practice);
  with ``"mean"`` its text embedding is the mean of its synonyms' embeddings (always so in
  training, where a label names a class).
- **An augmented vocabulary** (SAN's predictor, official SAN ``predict.py:196-209`` and its
  ``_postprocess``): a builtin list's classes are added to the user's for open-ended scenes;
  the extra classes' scores fold into one ``"other"`` class.
- **Background by a threshold** (the confidence rule of MaskCLIP+, official MaskCLIP
  ``mmseg/models/decode_heads/maskclip_plus_head.py:196-199``): a pixel whose best class
  probability is below the threshold is background.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..vocab import Vocabulary, normalize_name, resolve_vocabulary, split_synonyms

__all__ = [
    "BACKGROUND_CLASS",
    "OTHER_CLASS",
    "VocabularyPlan",
    "SYNONYM_MERGES",
    "augment_names",
    "defer_to_smaller_classes",
    "fold_augmented",
    "insert_background",
    "max_over_synonyms",
    "mean_synonym_embeddings",
    "synonym_groups",
]

# "max": a class's score = max over its synonyms' scores; "mean": its text embedding = the
# mean of its synonyms' embeddings
SYNONYM_MERGES = ("max", "mean")
OTHER_CLASS = "other"
BACKGROUND_CLASS = "background"


def synonym_groups(names: Sequence[str]) -> Optional[Tuple[Tuple[str, ...], List[List[int]]]]:
    """The synonyms of ``names`` as one list of distinct words, with each class's words.

    A word may name several classes (ADE's "screen door, screen", "blind, screen" and
    "screen"): it is scored once and counts for each; :func:`defer_to_smaller_classes` is the
    maximum's rule for such words.

    Returns:
        None when no name has synonyms; else (the distinct words, per class the indices of
        its words among them).
    """
    split = [split_synonyms(n) for n in names]
    if all(len(s) == 1 for s in split):
        return None
    words: List[str] = []
    index: dict = {}
    members: List[List[int]] = []
    for synonyms in split:
        mine: List[int] = []
        for word in synonyms:
            key = normalize_name(word)
            if key not in index:
                index[key] = len(words)
                words.append(word)
            if index[key] not in mine:
                mine.append(index[key])
        members.append(mine)
    return tuple(words), members


def defer_to_smaller_classes(members: List[List[int]]) -> List[List[int]]:
    """Per class its words (indices), without those of every class whose words are a strict
    subset of its own: the maximum over synonyms (SYNONYM_MERGE max) scores each class by its
    best word, so a larger class holding all of a smaller one's words would score at least
    as high everywhere and the smaller could never win. ADE's "screen" keeps "screen" from
    "screen door, screen" and "blind, screen", "stool" and "pot" from "toilet, can, ...,
    stool, throne". A class made only of such words ("a, b" beside "a" and "b") keeps them.
    """
    classes_of: dict = {}
    for c, mine in enumerate(members):
        for w in mine:
            classes_of.setdefault(w, []).append(c)
    out = []
    for c, mine in enumerate(members):
        own = set(mine)
        others = {o for w in mine for o in classes_of[w] if o != c}
        taken = set().union(*(set(members[o]) for o in others if set(members[o]) < own))
        kept = [w for w in mine if w not in taken]
        out.append(kept or list(mine))
    return out


def max_over_synonyms(scores: Tensor, members: Sequence[Sequence[int]]) -> Tensor:
    """Per class, the maximum over its synonyms' scores.

    Args:
        scores (Tensor): (B, W, H, W') scores of the distinct words.
        members: per class, the indices of its words.

    Returns:
        Tensor: (B, K, H, W') for the K classes.
    """
    # written class by class into one output: a list of K maps and their stack would hold
    # the (B, K, H, W') result twice at the full size (ADE20K-847: 1.1 GB each at 512 x 683)
    out = scores.new_empty((scores.shape[0], len(members), *scores.shape[2:]))
    for k, m in enumerate(members):
        out[:, k] = scores[:, m[0]] if len(m) == 1 else scores[:, list(m)].amax(dim=1)
    return out


def mean_synonym_embeddings(encode: Callable[[Sequence[str]], Tensor], names: Sequence[str]):
    """(K, D) L2-normalised text embeddings, a class with synonyms getting the normalised
    mean of its synonyms' embeddings.

    Args:
        encode: names -> (n, D) L2-normalised embeddings (the teacher's ``encode_text``).
        names: the K class names.
    """
    groups = synonym_groups(names)
    if groups is None:
        return encode(names)
    words, members = groups
    emb = encode(words)
    return F.normalize(torch.stack([emb[list(m)].mean(dim=0) for m in members]), dim=-1)


def augment_names(names: Sequence[str], augment: str) -> Tuple[str, ...]:
    """``names`` followed by the classes of the vocabulary ``augment`` (a builtin name, a
    .json file or a list in the vocabulary syntax) that share no synonym with them."""
    extra = resolve_vocabulary(augment).names
    taken = {normalize_name(w) for n in names for w in split_synonyms(n)}
    if normalize_name(OTHER_CLASS) in taken:
        raise ValueError(
            f"The vocabulary holds {OTHER_CLASS!r}, the name augmented classes are shown as; "
            "rename that class or do not augment the vocabulary"
        )
    added = tuple(
        n for n in extra if not any(normalize_name(w) in taken for w in split_synonyms(n))
    )
    return Vocabulary(tuple(names) + added).names


def fold_augmented(probs: Tensor, num_user: int) -> Tensor:
    """(B, K + E, H, W) probabilities over the user's K classes and E added ones ->
    (B, K + 1, H, W), the last channel ``"other"`` = the maximum over the added classes, so
    a pixel is "other" exactly when an added class was its best (SAN's rule)."""
    user, extra = probs[:, :num_user], probs[:, num_user:]
    if extra.shape[1] == 0:
        return torch.cat([user, torch.zeros_like(user[:, :1])], dim=1)
    return torch.cat([user, extra.amax(dim=1, keepdim=True)], dim=1)


def insert_background(probs: Tensor, index: int, threshold: float) -> Tensor:
    """Insert a background channel at ``index``: a pixel whose best class probability is
    below ``threshold`` is background.

    The channel holds ``threshold`` at background pixels (above every class there) and 0
    elsewhere (below the best class, which reaches the threshold), so the argmax of the
    result is the rule's label.

    Args:
        probs (Tensor): (B, K, H, W) class probabilities.
        index (int): where the background goes, in [0, K].
        threshold (float): in (0, 1].

    Returns:
        Tensor: (B, K + 1, H, W).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"background threshold must be in (0, 1], got {threshold}")
    if not 0 <= index <= probs.shape[1]:
        raise ValueError(f"background index {index} is outside [0, {probs.shape[1]}]")
    best = probs.amax(dim=1, keepdim=True)
    bg = torch.where(best < threshold, torch.full_like(best, threshold), torch.zeros_like(best))
    return torch.cat([probs[:, :index], bg, probs[:, index:]], dim=1)


@dataclass(frozen=True)
class VocabularyPlan:
    """What a model is asked for a user's vocabulary, and how its probabilities become the
    user's classes: the augmented classes folded into ``"other"`` (last), then a background
    by a threshold (where the user's vocabulary has "background", else first).

    Attributes:
        names: the classes the final scores and labels index.
        model_names: the classes the model scores (no background; the added classes).
        num_user: how many of ``model_names`` are the user's.
        augmented: whether classes were added (then ``names`` ends with "other").
        background_index: where the background goes in ``names``, or None.
        background_threshold: the threshold (0 without a background).
    """

    names: Tuple[str, ...]
    model_names: Tuple[str, ...]
    num_user: int
    augmented: bool = False
    background_index: Optional[int] = None
    background_threshold: float = 0.0

    @classmethod
    def make(
        cls,
        names: Sequence[str],
        augment: Optional[str] = None,
        background_threshold: Optional[float] = None,
    ) -> VocabularyPlan:
        """
        Args:
            names: the user's classes (synonyms as ``"a, b"``).
            augment: a vocabulary to add (builtin name, .json file or list), or None.
            background_threshold: in (0, 1], or None / 0 for no background.
        """
        names = Vocabulary(tuple(names)).names
        bg_index = None
        number = isinstance(background_threshold, numbers.Real) and not isinstance(
            background_threshold, bool
        )
        if background_threshold is not None and not number:
            raise ValueError(
                f"background threshold must be a number in (0, 1], got {background_threshold!r}"
            )
        if background_threshold:
            if not 0 < background_threshold <= 1:
                raise ValueError(
                    f"background threshold must be in (0, 1], got {background_threshold}"
                )
            # the user's background class, also one written with synonyms ("background, sky")
            found = [i for i, n in enumerate(names)
                     if BACKGROUND_CLASS in map(normalize_name, split_synonyms(n))]  # fmt: skip
            bg_index = found[0] if found else 0
            bg_name = names[bg_index] if found else BACKGROUND_CLASS
            names = tuple(n for n in names if n != bg_name)
            if not names:
                raise ValueError("The vocabulary holds only 'background'; add the classes")
        model_names = augment_names(names, augment) if augment else names
        shown = names + ((OTHER_CLASS,) if augment else ())
        if bg_index is not None:
            shown = shown[:bg_index] + (bg_name,) + shown[bg_index:]
        return cls(shown, model_names, len(names), bool(augment), bg_index,
                   float(background_threshold or 0.0))  # fmt: skip

    @property
    def identity(self) -> bool:
        """Whether the model's classes are the final ones (nothing added, no background)."""
        return not self.augmented and self.background_index is None

    def class_index(self, index: Tensor) -> Tensor:
        """Class indices into ``model_names`` (an instance's ``pred_classes``, a panoptic
        segment's ``category_id``) -> indices into ``names``: an added class is "other", and
        the classes at and after the background's place move up by one."""
        index = torch.as_tensor(index).clone()
        if self.augmented:
            index = index.clamp(max=self.num_user)
        if self.background_index is not None:
            index[index >= self.background_index] += 1
        return index

    def probabilities(self, probs: Tensor) -> Tensor:
        """(B, len(model_names), H, W) probabilities -> (B, len(names), H, W)."""
        if self.augmented:
            probs = fold_augmented(probs, self.num_user)
        if self.background_index is not None:
            probs = insert_background(probs, self.background_index, self.background_threshold)
        return probs
