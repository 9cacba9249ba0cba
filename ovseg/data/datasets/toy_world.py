"""The offline world: procedural images of coloured shapes with pixel labels and captions.

Each image (64x64 by default) shows 1-3 non-overlapping objects, one of 8 shapes in one of
8 colours, on one of 4 background textures. Pixel classes are ``background`` + the 8 shapes;
colour is a nuisance. Captions name every object's shape (colour words dropped from half of
them). Every sample is a pure function of ``(seed, stream, index)``, so a world is the same on
every machine and a bigger world extends a smaller one (the samples: ``toy_scenes.py``).

On disk (ADE20K's prepared layout, so the real loaders run it)::

    <root>/toy_world/manifest.json                       parameters + generator version
    <root>/toy_world/images/{training,validation}/*.png
    <root>/toy_world/annotations_detectron2/{training,validation}/*.png   0 = background
    <root>/toy_world/captions_{training,validation}.json  image_id -> list of captions
    <root>/toy_world/panoptic/...   instances and panoptic segments (toy_world_instances.py)

Registered as ``toy_world_sem_seg_{train,val}`` (split "a") and ``toy_world_b_sem_seg_{...}``
(split "b"); both read the same files and differ only in ``unseen_classes``.
Build it with ``python -m ovseg.data.datasets.toy_world --root datasets``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from PIL import Image

from ...utils.io import publish_folder
from .common import datasets_root
from .register_toy_world import (
    _SUBDIRS,
    SPLITS,
    _read_manifest,
    register_all_toy_world,
    register_toy_world,
)
from .toy_scenes import (
    CLASSES,
    COLORS,
    SHAPES,
    STREAMS,
    TEXTURES,
    ToyObject,
    ToyScene,
    _image_id,
    caption_scene,
    generate_sample,
    render_scene,
    sample_rng,
    sample_scene,
    twin_scene,
)
from .toy_world_instances import build_toy_instances

__all__ = [
    "CLASSES", "COLORS", "SHAPES", "SPLITS", "STREAMS", "TEXTURES", "ToyObject", "ToyScene",
    "build_toy_world", "caption_scene", "generate_sample", "register_all_toy_world",
    "register_toy_world",
    "render_scene", "sample_rng", "sample_scene", "twin_scene",
]  # fmt: skip

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1


# ------------------------------------------------------------------------- on disk


def _write_world(folder: Path, params: dict) -> None:
    for stream, count in (("training", params["num_train"]), ("validation", params["num_val"])):
        image_dir, label_dir = (folder / d / stream for d in _SUBDIRS)
        image_dir.mkdir(parents=True)
        label_dir.mkdir(parents=True)
        captions: Dict[str, List[str]] = {}
        for i in range(count):
            image, label, caps, _ = generate_sample(params["seed"], stream, i, params["size"])
            stem = _image_id(stream, i)
            Image.fromarray(image).save(image_dir / f"{stem}.png")
            Image.fromarray(label).save(label_dir / f"{stem}.png")
            captions[stem] = caps
        with open(folder / f"captions_{stream}.json", "w", encoding="utf-8") as f:
            json.dump(captions, f, indent=0, sort_keys=True)
    with open(folder / "manifest.json", "w", encoding="utf-8") as f:  # written last
        json.dump(params, f, indent=1, sort_keys=True)


def build_toy_world(
    root: Optional[str] = None,
    *,
    num_train: int = 2000,
    num_val: int = 200,
    seed: int = 0,
    size: int = 64,
    overwrite: bool = False,
) -> Path:
    """Write the world under ``<root>/toy_world`` unless the same one is already there.

    The world is built in a temporary sibling folder and renamed into place, so a reader
    never sees half a world. A world with other parameters is only replaced with
    ``overwrite=True``; otherwise this raises rather than delete anything.

    Args:
        root (str): dataset root; default ``$DETECTRON2_DATASETS`` (or ``datasets``).
        num_train, num_val (int): images per split.
        seed (int): the world's seed.
        size (int): image side in pixels.
        overwrite (bool): replace an existing world with other parameters.

    Returns:
        Path: the world folder.
    """
    if num_train < 1 or num_val < 1 or size < 32:
        raise ValueError(
            f"need num_train >= 1, num_val >= 1 and size >= 32; got num_train={num_train}, "
            f"num_val={num_val}, size={size}"
        )
    params = {
        "generator_version": GENERATOR_VERSION, "seed": int(seed), "size": int(size),
        "num_train": int(num_train), "num_val": int(num_val),
    }  # fmt: skip
    folder = Path(root if root is not None else datasets_root()) / "toy_world"
    found = _read_manifest(folder)
    if found == params:
        logger.info("Reusing the toy world in %s (%s)", folder, params)
        return _with_instances(folder, params)
    if folder.exists() and not overwrite:
        what = f"a toy world with other parameters {found}" if found else "a folder without a "
        what += "" if found else "valid manifest.json"
        raise FileExistsError(
            f"{folder} holds {what}; wanted {params}. Choose another root (--root or "
            "DETECTRON2_DATASETS) or pass --overwrite (overwrite=True) to replace it."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".toy_world.tmp-", dir=folder.parent))
    try:
        logger.info("Writing the toy world %s to %s", params, folder)
        _write_world(tmp, params)
        if folder.exists():
            logger.warning("Replacing the toy world %s in %s (overwrite=True)", found, folder)
        # another process may finish the same world first: accepted when its manifest matches
        publish_folder(tmp, folder, lambda: _read_manifest(folder) == params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _with_instances(folder, params)


def _with_instances(folder: Path, params: dict) -> Path:
    build_toy_instances(folder, params)
    return folder


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        default=None,
        help="dataset root; the world goes to <root>/toy_world (default $DETECTRON2_DATASETS, "
        "else ./datasets, where the toy configs look for it)",
    )
    parser.add_argument("--num-train", type=int, default=2000, help="training images (2000)")
    parser.add_argument("--num-val", type=int, default=200, help="validation images (200)")
    parser.add_argument("--seed", type=int, default=0, help="the world's random seed (0)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace a different world")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = build_toy_world(
        args.root, num_train=args.num_train, num_val=args.num_val, seed=args.seed,
        size=args.size, overwrite=args.overwrite,
    )  # fmt: skip
    print(folder)


if __name__ == "__main__":
    main()
