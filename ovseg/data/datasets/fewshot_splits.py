# Reads HSNet's PASCAL-5i / COCO-20i fold lists (juhongm999/hsnet data/splits, also shipped in
# isl-org/lang-seg fewshot_data/data/splits), re-written; never unpickles arbitrary objects.
"""The fold lists of the few-shot-style benchmarks, as HSNet ships them and as ovseg stores them.

HSNet's lists are data, not a rule that can be re-derived from the annotations: they come from
the FWB/OSLSM lists (PASCAL val fold 0 keeps 346 (image, class) pairs of VOC val, not every
image showing those classes), so ovseg reads them and writes them once as JSON under
``$DETECTRON2_DATASETS/fewshot_splits/<benchmark>/<trn|val>/fold<k>.json``
(``datasets/prepare_fewshot_splits.py``). Order is kept: the test episodes depend on it.

- PASCAL-5i, ``pascal/<trn|val>/fold<k>.txt``: one ``<image id>__<class 1..20>`` per line;
  fold k's file lists the pairs of fold k's classes (hsnet data/pascal.py:119-124).
- COCO-20i, ``coco/<trn|val>/fold<k>.pkl``: a pickled dict {class id 0..79: [image path
  relative to COCO2014, ...]}; the trn file of fold k holds the base classes of fold k, the
  val file its novel classes (hsnet data/coco.py:68-77). Parsed by an unpickler that admits
  no global at all (dicts, lists, str and int need none), so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ...utils.io import atomic_write_json

__all__ = [
    "BENCHMARKS",
    "NUM_FOLDS",
    "SPLIT_DIR",
    "load_coco_classwise",
    "load_pascal_pairs",
    "read_hsnet_coco_pickle",
    "read_hsnet_pascal_list",
    "split_json_path",
    "write_split_json",
]

NUM_FOLDS = 4
SPLIT_DIR = "fewshot_splits"
# benchmark -> (HSNet's folder under data/splits, number of classes)
BENCHMARKS = {"pascal5i": ("pascal", 20), "coco20i": ("coco", 80)}


def split_json_path(root: str | os.PathLike, benchmark: str, split: str, fold: int) -> Path:
    """Where ovseg keeps one fold list: ``<root>/fewshot_splits/<benchmark>/<split>/fold<k>.json``.

    Args:
        root: the datasets root ($DETECTRON2_DATASETS).
        benchmark (str): "pascal5i" or "coco20i".
        split (str): "trn" (training pairs) or "val" (test pairs), HSNet's names.
        fold (int): 0..3.
    """
    if benchmark not in BENCHMARKS or split not in ("trn", "val") or fold not in range(4):
        raise ValueError(
            f"No fold list for benchmark={benchmark!r} split={split!r} fold={fold!r}; "
            f"benchmarks {sorted(BENCHMARKS)}, splits 'trn'/'val', folds 0..3"
        )
    return Path(root) / SPLIT_DIR / benchmark / split / f"fold{fold}.json"


def read_hsnet_pascal_list(path: str | os.PathLike) -> List[Tuple[str, int]]:
    """Parse one HSNet PASCAL-5i list into (image id, class id 0..19) pairs, in file order.

    HSNet drops the text after the last newline and subtracts 1 from the class
    (hsnet data/pascal.py:121-123).
    """
    pairs = []
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.split("\n")[:-1], 1):
        parts = line.strip().split("__")
        if len(parts) != 2 or not parts[0] or not parts[1].isdigit():
            raise ValueError(
                f"{path}:{number}: {line!r} is not '<image id>__<class 1..20>'; is this one of "
                "HSNet's data/splits/pascal/<trn|val>/fold<k>.txt files?"
            )
        class_id = int(parts[1]) - 1
        if not 0 <= class_id < 20:
            raise ValueError(f"{path}:{number}: class {parts[1]} is outside 1..20")
        pairs.append((parts[0], class_id))
    return pairs


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global: only builtin containers and scalars load."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"{self.source} refers to {module}.{name}; an HSNet fold list holds only a dict of "
            "lists of strings, so this file is not one (refused without running it)"
        )


def read_hsnet_coco_pickle(path: str | os.PathLike) -> Dict[int, List[str]]:
    """Parse one HSNet COCO-20i ``fold<k>.pkl`` without executing anything it names.

    Returns:
        dict: class id (0..79) -> image paths relative to ``COCO2014`` (e.g.
        ``"val2014/COCO_val2014_000000429717.jpg"``), keys and lists in the file's order.
    """
    data = Path(path).read_bytes()
    obj = _DataOnlyUnpickler(io.BytesIO(data), str(path)).load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not HSNet's dict of class lists")
    classwise: Dict[int, List[str]] = {}
    for key, names in obj.items():
        if type(key) is not int or not 0 <= key < 80:
            raise ValueError(f"{path}: key {key!r} is not a COCO-20i class id 0..79")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: class {key} does not map to a list of image paths")
        classwise[key] = list(names)
    return classwise


def write_split_json(
    root: str | os.PathLike, benchmark: str, split: str, fold: int, entries, source: str
) -> Path:
    """Store one fold list as JSON (atomically).

    Args:
        entries: PASCAL: (image id, class id) pairs; COCO: {class id: [image paths]}.
        source (str): where the list came from, kept in the file.
    """
    path = split_json_path(root, benchmark, split, fold)
    body = {"benchmark": benchmark, "split": split, "fold": fold, "source": source}
    if benchmark == "pascal5i":
        body["pairs"] = [[name, int(c)] for name, c in entries]
    else:  # a list of [class, names] keeps the order JSON objects do not promise
        body["classwise"] = [[int(c), list(names)] for c, names in entries.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, body)
    return path


def _read_json(root, benchmark: str, split: str, fold: int, key: str, dataset_name: str):
    path = split_json_path(root, benchmark, split, fold)
    if not path.is_file():
        raise FileNotFoundError(
            f"Dataset {dataset_name!r}: fold list {path} does not exist. Convert HSNet's split "
            "files once with python datasets/prepare_fewshot_splits.py --hsnet-splits "
            "<hsnet>/data/splits (datasets/README.md, 'PASCAL-5i and COCO-20i')."
        )
    with open(path, encoding="utf-8") as f:
        body = json.load(f)
    if body.get("benchmark") != benchmark or key not in body:
        raise ValueError(f"{path} is not a {benchmark} fold list (no {key!r}); re-create it")
    return body[key]


def load_pascal_pairs(
    root, split: str, folds: Sequence[int], dataset_name: str = ""
) -> List[Tuple[str, int]]:
    """(image id, class id) pairs of the given folds' lists, fold after fold, in file order
    (HSNet's training set is the other three folds' trn lists, hsnet data/pascal.py:126-137)."""
    pairs = []
    for fold in folds:
        entries = _read_json(root, "pascal5i", split, fold, "pairs", dataset_name)
        pairs += [(str(n), int(c)) for n, c in entries]
    return pairs


def load_coco_classwise(
    root, split: str, fold: int, dataset_name: str = ""
) -> Dict[int, List[str]]:
    """{class id: [image paths]} of one COCO-20i fold list, in the stored order."""
    entries = _read_json(root, "coco20i", split, fold, "classwise", dataset_name)
    return {int(c): [str(n) for n in names] for c, names in entries}
