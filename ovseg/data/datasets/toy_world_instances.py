"""The offline world's instances: panoptic PNGs + json and COCO instance json per split.

Derived from the same procedural samples as :mod:`ovseg.data.datasets.toy_world` (the
semantic files are not touched): every object is an instance of its shape with its own mask
and segment id, and the background is one stuff class (``background``). Each image shows one
background texture over the whole of it, so a second stuff class would only rename that one
segment, and would break the class list the semantic splits share; it is left out.

Categories (COCO panoptic style, ids from 1): ``background`` = 1 (stuff), the shapes 2-9
(things) in :data:`~ovseg.data.datasets.toy_scenes.CLASSES` order, so contiguous ids equal the
semantic label values. Segment ids are ``category id * 1000 + object number`` (0 for the
background), unique per image.

On disk, next to the semantic world (written by ``build_toy_world``, cached by its own
manifest)::

    <root>/toy_world/panoptic/manifest.json          world parameters + panoptic version
    <root>/toy_world/panoptic/{training,validation}/*.png     panoptic ids as RGB
    <root>/toy_world/panoptic/panoptic_{training,validation}.json
    <root>/toy_world/panoptic/instances_{training,validation}.json   RLE masks
    <root>/toy_world/panoptic/captions_{training,validation}.json    COCO captions format

Registered per zero-shot split as ``<prefix>_panoptic_{train,val}`` (evaluator
``ovseg_panoptic``: PQ, mask AP and mIoU) and ``<prefix>_instance_{train,val}`` (evaluator
``ovseg_instance``; with unseen shapes also XPM's ``<prefix>_instance_val_{unseen,seen}``
evaluation sets); like the semantic splits, train and val of "a" and "b" read the same
files and differ in ``unseen_classes`` (the training mappers remove the unseen shapes).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.io import publish_folder
from .instance_common import register_instance_split, register_panoptic_split
from .instance_eval_sets import register_instance_eval_sets
from .toy_scenes import _DIRS, CLASSES, SHAPES, ToyScene, _image_id, generate_sample, render_scene

__all__ = [
    "CATEGORIES",
    "PANOPTIC_DIR",
    "THING_CATEGORIES",
    "build_toy_instances",
    "instance_masks",
    "register_toy_world_instances",
]

PANOPTIC_VERSION = 1
PANOPTIC_DIR = "panoptic"
CATEGORIES = [{"id": i + 1, "name": n, "isthing": int(i > 0)} for i, n in enumerate(CLASSES)]
THING_CATEGORIES = [c for c in CATEGORIES if c["isthing"]]
SEGMENT_DIVISOR = 1000
_SCRIPT = "README.md (the toy world is written by ovseg.data.datasets.toy_world)"


def instance_masks(scene: ToyScene) -> List[Tuple[int, np.ndarray]]:
    """(category id, (H, W) bool mask) of every object, in the scene's order.

    Each mask is the object drawn alone (the same renderer) where the full scene's label
    shows its shape, so masks are disjoint and their union is the semantic label's
    foreground. Objects with no pixel left are skipped.
    """
    _, label = render_scene(scene)
    out = []
    for o in scene.objects:
        _, alone = render_scene(replace(scene, objects=(o,)))
        value = CLASSES.index(o.shape)
        mask = (alone == value) & (label == value)
        if mask.any():
            out.append((value + 1, mask))
    return out


def _id2rgb(ids: np.ndarray) -> np.ndarray:
    # COCO panoptic PNG colours: id = R + 256 G + 256**2 B
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


def _bbox(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _write_stream(out: Path, stream: str, count: int, params: dict) -> None:
    """One split's panoptic PNGs and its panoptic, instance and caption jsons."""
    png_dir = out / stream
    png_dir.mkdir(parents=True)
    images, panoptic, instances, captions = [], [], [], []
    for i in range(count):
        _, label, caps, scene = generate_sample(params["seed"], stream, i, params["size"])
        stem = _image_id(stream, i)
        h, w = label.shape
        images.append({"id": i, "file_name": f"{stem}.png", "height": h, "width": w})
        ids = np.zeros((h, w), np.int64)
        background = label == 0
        ids[background] = CATEGORIES[0]["id"] * SEGMENT_DIVISOR
        segments = [
            {"id": CATEGORIES[0]["id"] * SEGMENT_DIVISOR, "category_id": CATEGORIES[0]["id"],
             "iscrowd": 0, "area": int(background.sum()), "bbox": _bbox(background)},
        ]  # fmt: skip
        for k, (cat, mask) in enumerate(instance_masks(scene), 1):
            seg = {"id": cat * SEGMENT_DIVISOR + k, "category_id": cat, "iscrowd": 0,
                   "area": int(mask.sum()), "bbox": _bbox(mask)}  # fmt: skip
            ids[mask] = seg["id"]
            segments.append(seg)
            ann = {**seg, "id": len(instances) + 1, "image_id": i, "segmentation": _rle(mask)}
            instances.append(ann)
        Image.fromarray(_id2rgb(ids)).save(png_dir / f"{stem}.png")
        panoptic.append({"image_id": i, "file_name": f"{stem}.png", "segments_info": segments})
        captions += [{"id": len(captions) + 1, "image_id": i, "caption": c} for c in caps]
    files = {
        "panoptic": {"images": images, "annotations": panoptic, "categories": CATEGORIES},
        "instances": {"images": images, "annotations": instances, "categories": THING_CATEGORIES},
        "captions": {"images": images, "annotations": captions},
    }
    for what, data in files.items():
        with open(out / f"{what}_{stream}.json", "w", encoding="utf-8") as f:
            json.dump(data, f)


def _read_manifest(folder: Path):
    try:
        with open(folder / "manifest.json", encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def build_toy_instances(world: Path, params: dict) -> Path:
    """Write ``<world>/panoptic`` for the world of ``params`` unless it is already there.

    Built in a temporary folder and renamed into place, like the world; a folder from
    other parameters or an older version of this writer is replaced (it is derived data).

    Args:
        world (Path): the semantic world's folder (``<root>/toy_world``).
        params (dict): the world's manifest (seed, size, num_train, num_val).

    Returns:
        Path: the panoptic folder.
    """
    out = Path(world) / PANOPTIC_DIR
    want = {**params, "panoptic_version": PANOPTIC_VERSION}
    if _read_manifest(out) == want:
        return out
    tmp = Path(tempfile.mkdtemp(prefix=".panoptic.tmp-", dir=world))
    try:
        for stream, count in (("training", params["num_train"]), ("validation", params["num_val"])):
            _write_stream(tmp, stream, count, params)
        with open(tmp / "manifest.json", "w", encoding="utf-8") as f:  # written last
            json.dump(want, f, indent=1, sort_keys=True)
        publish_folder(tmp, out, lambda: _read_manifest(out) == want)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ------------------------------------------------------------------------- registration
def _checked(loader, *, dataset_name: str, folder: str):
    """The loader, its missing files reported with the command that writes them."""
    command = f"python -m ovseg.data.datasets.toy_world --root {Path(folder).parents[1]}"
    if _read_manifest(Path(folder)) is None:
        raise FileNotFoundError(
            f"Dataset {dataset_name!r}: no toy-world instances at {folder} (manifest.json "
            f"missing). Write them (with the world) with: {command}"
        )
    try:
        return loader()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e} For the toy world, rebuild it: {command} --overwrite"
        ) from None


def _wrap_loader(name: str, folder: str) -> None:
    loader = DatasetCatalog[name]
    DatasetCatalog.remove(name)
    DatasetCatalog.register(
        name, functools.partial(_checked, loader, dataset_name=name, folder=folder)
    )
    MetadataCatalog.get(name).set(vocabulary_name="toy9")


def register_toy_world_instances(
    root: str, prefix: str = "toy_world", unseen: Sequence[str] = ()
) -> None:
    """Register ``<prefix>_panoptic_{train,val}`` and ``<prefix>_instance_{train,val}``.

    Args:
        root (str): dataset root (the world is ``<root>/toy_world``).
        prefix (str): name prefix, e.g. ``"toy_world_b"``.
        unseen (Sequence[str]): the split's unseen shapes.
    """
    stray = [c for c in unseen if c not in SHAPES]
    if stray:
        raise ValueError(f"unseen classes {stray} are not toy shapes {SHAPES}")
    world = os.path.join(root, "toy_world")
    folder = os.path.join(world, PANOPTIC_DIR)
    unseen_ids = [c["id"] for c in CATEGORIES if c["name"] in unseen]
    for split, stream in _DIRS.items():
        images = os.path.join(world, "images", stream)
        instances = os.path.join(folder, f"instances_{stream}.json")
        name = f"{prefix}_panoptic_{split}"
        register_panoptic_split(
            name,
            categories=CATEGORIES,
            unseen_ids=unseen_ids,
            image_root=images,
            panoptic_root=os.path.join(folder, stream),
            panoptic_json=os.path.join(folder, f"panoptic_{stream}.json"),
            sem_seg_root=os.path.join(world, "annotations_detectron2", stream),
            instances_json=instances,
            prepare_script=_SCRIPT,
            image_ext=".png",
        )
        _wrap_loader(name, folder)
        name = f"{prefix}_instance_{split}"
        register_instance_split(
            name,
            categories=THING_CATEGORIES,
            unseen_ids=unseen_ids,
            image_root=images,
            json_file=instances,
            captions_json=os.path.join(folder, f"captions_{stream}.json"),
            prepare_script=_SCRIPT,
        )
        _wrap_loader(name, folder)
        if split == "val":  # XPM's unseen-only and seen-only evaluation sets
            register_instance_eval_sets(name)
