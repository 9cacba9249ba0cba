# Follows HSNet's PASCAL-5i / COCO-20i loaders (juhongm999/hsnet data/pascal.py, data/coco.py)
# as LSeg's zero-shot runs use them with nshot 0 (isl-org/lang-seg fewshot_data/data), re-written.
"""Few-shot-style zero-shot benchmarks: folds, training pairs and deterministic test episodes.

A benchmark has 4 folds; fold k's 20/4 or 80/4 classes are its novel (unseen) classes, the rest
its base (seen) classes. Every record is one (image, class) pair and carries that class as
``"episode_class"``; the binary target (class vs everything else) is made by the
``ovseg_binary_episode`` mapper, and the record's vocabulary is ``['others', <class>]``.

- ``<benchmark>_fold<k>_train``: the base classes' pairs, in HSNet's order.
- ``<benchmark>_fold<k>_test``: ``num_episodes`` (1000) query episodes of the novel classes:
  PASCAL-5i walks the val list in order and wraps around (``idx %= len``, hsnet
  data/pascal.py:30-33, 96-97), so no randomness is involved; COCO-20i draws a class
  uniformly, then a query image of it, with numpy's legacy generator seeded as the test
  seeds it (``fix_randseed(0)``, hsnet common/utils.py:8-13, lang-seg test_lseg_zs.py:288;
  draws as hsnet data/coco.py:84-88; LSeg's nshot 0 draws no support image between them).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Dict, List, Sequence

import numpy as np

from ...utils.colors import deterministic_colors
from ...vocab import Vocabulary
from .common import register_split
from .fewshot_splits import NUM_FOLDS, load_coco_classwise, load_pascal_pairs

__all__ = [
    "EPISODE_SEED",
    "NUM_TEST_EPISODES",
    "coco_test_episodes",
    "fold_class_ids",
    "pascal_test_episodes",
    "register_fewshot_benchmark",
]

logger = logging.getLogger(__name__)

NUM_TEST_EPISODES = 1000  # hsnet data/pascal.py:30, data/coco.py:30
EPISODE_SEED = 0  # hsnet test.py:20, lang-seg test_lseg_zs.py:288


def fold_class_ids(num_classes: int, fold: int, rule: str) -> List[int]:
    """Fold ``fold``'s novel class ids (0-based).

    ``"block"`` (PASCAL-5i): classes 5k..5k+4 (hsnet data/pascal.py:107-110);
    ``"interleaved"`` (COCO-20i): classes k, k+4, k+8, ... (hsnet data/coco.py:60-63).
    """
    if fold not in range(NUM_FOLDS):
        raise ValueError(f"fold must be 0..{NUM_FOLDS - 1}, got {fold!r}")
    per_fold = num_classes // NUM_FOLDS
    if rule == "block":
        return [fold * per_fold + i for i in range(per_fold)]
    if rule == "interleaved":
        return [fold + NUM_FOLDS * v for v in range(per_fold)]
    raise ValueError(f"Unknown fold rule {rule!r}; use 'block' or 'interleaved'")


def pascal_test_episodes(pairs: Sequence, num_episodes: int = NUM_TEST_EPISODES) -> List:
    """Episode i is pair ``i % len(pairs)`` (hsnet data/pascal.py:30-33)."""
    if not pairs:
        raise ValueError("A PASCAL-5i val fold list is empty; re-create the fold lists")
    return [pairs[i % len(pairs)] for i in range(num_episodes)]


def coco_test_episodes(
    classwise: Dict[int, List[str]],
    class_ids: Sequence[int],
    num_episodes: int = NUM_TEST_EPISODES,
    seed: int = EPISODE_SEED,
) -> List:
    """(image path, class id) per episode: ``choice(class_ids)`` then ``choice(images)`` with
    ``replace=False`` from ``RandomState(seed)``, call for call as hsnet data/coco.py:85-86."""
    missing = [c for c in class_ids if not classwise.get(c)]
    if missing:
        raise ValueError(f"COCO-20i val fold list has no image for novel classes {missing}")
    rng = np.random.RandomState(seed)
    episodes = []
    for _ in range(num_episodes):
        class_id = rng.choice(list(class_ids), 1, replace=False)[0]
        name = rng.choice(classwise[int(class_id)], 1, replace=False)[0]
        episodes.append((str(name), int(class_id)))
    return episodes


def _record(image: str, label: str, class_id: int, **extra) -> dict:
    stem = os.path.splitext(os.path.basename(image))[0]
    return {
        "file_name": image,
        "sem_seg_file_name": label,
        "image_id": stem,
        "episode_class": int(class_id),
        **extra,
    }


def _load_pascal(root: str, fold: int, train: bool, name: str, num_episodes: int) -> List[dict]:
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    if train:  # the other folds' trn lists (hsnet data/pascal.py:131-135)
        pairs = load_pascal_pairs(root, "trn", [f for f in range(4) if f != fold], name)
    else:
        pairs = pascal_test_episodes(load_pascal_pairs(root, "val", [fold], name), num_episodes)
    return [
        _record(
            os.path.join(voc, "JPEGImages", stem + ".jpg"),
            os.path.join(voc, "SegmentationClassAug", stem + ".png"),
            c,
            **({} if train else {"episode": i}),
        )
        for i, (stem, c) in enumerate(pairs)
    ]


def _load_coco(
    root: str, fold: int, train: bool, name: str, num_episodes: int, seed: int
) -> List[dict]:
    base = os.path.join(root, "COCO2014")
    novel = fold_class_ids(80, fold, "interleaved")
    classwise = load_coco_classwise(root, "trn" if train else "val", fold, name)
    if train:
        bad = [c for c, names in classwise.items() if names and c in novel]
        if bad:
            raise ValueError(f"{name}: the trn fold list has images for novel classes {bad}")
        pairs = [(n, c) for c, names in classwise.items() for n in names]
    else:
        pairs = coco_test_episodes(classwise, novel, num_episodes, seed)
    # a mask is annotations/<path>.png (hsnet data/coco.py:79-82)
    return [
        _record(
            os.path.join(base, path),
            os.path.join(base, "annotations", os.path.splitext(path)[0] + ".png"),
            c,
            **({} if train else {"episode": i}),
        )
        for i, (path, c) in enumerate(pairs)
    ]


def register_fewshot_benchmark(
    benchmark: str,
    root: str,
    *,
    vocabulary_name: str,
    rule: str,
    test_ignores_boundary: bool,
    num_episodes: int = NUM_TEST_EPISODES,
    seed: int = EPISODE_SEED,
) -> None:
    """Register ``<benchmark>_fold<k>_{train,test}`` for k = 0..3 (nothing is read now).

    Args:
        benchmark (str): "pascal5i" or "coco20i".
        root (str): the datasets root.
        vocabulary_name (str): builtin vocabulary of the benchmark's classes, in id order.
        rule (str): fold rule of :func:`fold_class_ids`.
        test_ignores_boundary (bool): label 255 is ignored in the test (PASCAL-5i, following
            PFENet, hsnet common/evaluation.py:15-21); COCO-20i masks have no such label.
        num_episodes, seed: the test episodes (seed used by COCO-20i only).
    """
    classes = list(Vocabulary.builtin(vocabulary_name).names)
    loader = _load_pascal if benchmark == "pascal5i" else _load_coco
    for fold in range(NUM_FOLDS):
        novel_ids = fold_class_ids(len(classes), fold, rule)
        novel = [classes[i] for i in novel_ids]
        for split in ("train", "test"):
            name = f"{benchmark}_fold{fold}_{split}"
            args = (root, fold, split == "train", name, num_episodes)
            if benchmark != "pascal5i":
                args += (seed,)
            register_split(
                name,
                functools.partial(loader, *args),
                stuff_classes=classes,
                stuff_colors=deterministic_colors(len(classes)),
                ignore_label=255,
                evaluator_type="fewshot_binary",
                benchmark=benchmark,
                fold=fold,
                novel_class_ids=novel_ids,
                unseen_classes=novel,
                seen_classes=[c for c in classes if c not in novel],
                background_name="others",
                label_offset=1,  # a mask stores class id + 1, 0 = background
                test_ignores_boundary=test_ignores_boundary,
                num_episodes=num_episodes,
                episode_seed=seed,
                vocabulary_name=vocabulary_name,
                # HSNet's COCO-20i draws a class, then an image (hsnet data/coco.py:84-88)
                train_sampling="class_uniform" if benchmark == "coco20i" else "records",
            )
