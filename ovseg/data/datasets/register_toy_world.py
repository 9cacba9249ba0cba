"""Registration of the offline world (:mod:`ovseg.data.datasets.toy_world` writes it):
``toy_world_sem_seg_{train,val}`` (split "a") and ``toy_world_<s>_sem_seg_{train,val}`` for
the other splits, with their instance and panoptic sets and FreeSeg's region test sets.

Kept apart from the world's generator so that importing the dataset package does not import
the module ``python -m ovseg.data.datasets.toy_world`` runs (runpy warns when it already is).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional, Sequence

from ...utils.colors import deterministic_colors
from .common import datasets_root, register_split
from .region_eval_sets import register_region_eval_set
from .toy_scenes import _DIRS, CLASSES, SHAPES, _image_id
from .toy_world_instances import register_toy_world_instances

__all__ = ["SPLITS", "register_all_toy_world", "register_toy_world"]

# zero-shot splits: unseen shapes never get a pixel label in inductive training
SPLITS = {"a": ("triangle", "ring"), "b": ("star", "cross")}
# the world's folders of images and of labels
_SUBDIRS = ("images", "annotations_detectron2")


def _read_manifest(folder: Path) -> Optional[dict]:
    try:
        with open(folder / "manifest.json", encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _load_split(*, dataset_name: str, folder: str, split_dir: str) -> List[dict]:
    """The split's samples as the manifest lists them, every file checked."""
    command = f"python -m ovseg.data.datasets.toy_world --root {os.path.dirname(folder)}"
    manifest = _read_manifest(Path(folder))
    if manifest is None:
        raise FileNotFoundError(
            f"Dataset {dataset_name!r}: no toy world at {folder} (manifest.json missing). "
            f"Write it with: {command}"
        )
    dicts = []
    for i in range(manifest["num_train" if split_dir == "training" else "num_val"]):
        stem = _image_id(split_dir, i)
        image, label = (os.path.join(folder, d, split_dir, f"{stem}.png") for d in _SUBDIRS)
        dicts.append({"file_name": image, "sem_seg_file_name": label, "image_id": stem})
    missing = [
        p for d in dicts for p in (d["file_name"], d["sem_seg_file_name"]) if not os.path.isfile(p)
    ]
    if missing:
        raise FileNotFoundError(
            f"Dataset {dataset_name!r}: the toy world at {folder} misses {len(missing)} files "
            f"its manifest lists, e.g. {missing[0]}. Rebuild it: {command} --overwrite "
            "(with the parameters in its manifest.json)"
        )
    return dicts


def register_toy_world(root: str, prefix: str = "toy_world", unseen: Sequence[str] = ()) -> None:
    """Register ``<prefix>_sem_seg_{train,val}`` over the world in ``<root>/toy_world``.

    Args:
        root (str): dataset root.
        prefix (str): name prefix, e.g. ``"toy_world_b"``.
        unseen (Sequence[str]): shapes without pixel labels in inductive training.
    """
    stray = [c for c in unseen if c not in SHAPES]
    if stray:
        raise ValueError(f"unseen classes {stray} are not toy shapes {SHAPES}")
    folder = os.path.join(root, "toy_world")
    for split, split_dir in _DIRS.items():
        name = f"{prefix}_sem_seg_{split}"
        register_split(
            name,
            lambda n=name, d=split_dir: _load_split(dataset_name=n, folder=folder, split_dir=d),
            stuff_classes=list(CLASSES),
            stuff_colors=[[0, 0, 0]] + deterministic_colors(len(SHAPES)),
            ignore_label=255,
            evaluator_type="ovseg_sem_seg",
            image_root=os.path.join(folder, "images", split_dir),
            sem_seg_root=os.path.join(folder, "annotations_detectron2", split_dir),
            captions=os.path.join(folder, f"captions_{split_dir}.json"),
            unseen_classes=[c for c in CLASSES if c in unseen],
            seen_classes=[c for c in CLASSES if c not in unseen],
            vocabulary_name="toy9",
        )
        register_region_eval_set(name)  # FreeSeg's prompt-stage test set
    register_toy_world_instances(root, prefix, unseen)


def register_all_toy_world(root: str) -> None:
    """Register every shipped split: "a" as ``toy_world_*``, others as ``toy_world_<s>_*``."""
    for split, unseen in SPLITS.items():
        register_toy_world(root, "toy_world" if split == "a" else f"toy_world_{split}", unseen)


register_all_toy_world(datasets_root())
