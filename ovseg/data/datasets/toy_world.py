"""The offline world: procedural images of coloured shapes with pixel labels and captions.

Each image (64x64 by default) shows 1-3 non-overlapping objects, one of 8 shapes in one of
8 colours, on one of 4 background textures. Pixel classes are ``background`` + the 8 shapes;
colour is a nuisance. Captions name every object's shape (colour words dropped from half of
them). Every sample is a pure function of ``(seed, stream, index)``, so a world is the same on
every machine and a bigger world extends a smaller one.

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
import functools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ...utils.io import publish_folder
from .common import datasets_root, deterministic_colors, register_split
from .region_eval_sets import register_region_eval_set

__all__ = [
    "CLASSES", "COLORS", "SHAPES", "SPLITS", "TEXTURES", "ToyObject", "ToyScene",
    "build_toy_world", "caption_scene", "generate_sample", "register_all_toy_world",
    "register_toy_world",
    "render_scene", "sample_rng", "sample_scene", "twin_scene",
]  # fmt: skip

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "crescent")
CLASSES = ("background",) + SHAPES
COLORS = {
    "red": (215, 35, 35), "green": (35, 165, 55), "blue": (40, 75, 220),
    "yellow": (235, 205, 30), "purple": (135, 50, 185), "orange": (240, 125, 25),
    "white": (245, 245, 245), "black": (20, 20, 20),
}  # fmt: skip
TEXTURES = ("plain", "striped", "checkered", "dotted")
# zero-shot splits: unseen shapes never get a pixel label in inductive training
SPLITS = {"a": ("triangle", "ring"), "b": ("star", "cross")}
# stream ids of the per-sample seeds; "pretrain" feeds tools/pretrain_toy_clip.py and never
# coincides with an image of the on-disk world
STREAMS = {"training": 0, "validation": 1, "pretrain": 2}
_TEMPLATES = (
    "a photo of {}.", "{}.", "a picture of {}.", "an image with {}.", "there is {} here.",
    "{} on a {} background.", "a photo of {} on a {} background.",
)  # fmt: skip


@dataclass(frozen=True)
class ToyObject:
    """One object: its shape (a class), colour (a nuisance), place, size and rotation."""

    shape: str
    color: str
    center: Tuple[float, float]  # (y, x) in pixels
    radius: float
    angle: float  # radians


@dataclass(frozen=True)
class ToyScene:
    """Everything an image is drawn from; :func:`render_scene` is a pure function of it."""

    size: int
    texture: str
    tones: Tuple[Tuple[int, int, int], Tuple[int, int, int]]  # background colours
    period: int  # texture period in pixels
    orientation: int  # stripes: 0 horizontal, 1 vertical, 2 diagonal
    objects: Tuple[ToyObject, ...]
    noise_seed: int


def sample_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The random generator of sample ``index`` of ``stream`` in the world of ``seed``."""
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; streams are {sorted(STREAMS)}")
    return np.random.default_rng(np.random.SeedSequence([seed, STREAMS[stream], index]))


def sample_scene(rng: np.random.Generator, size: int = 64) -> ToyScene:
    """Draw a scene: texture, 1-3 non-overlapping objects (shape, colour, place, size, angle)."""
    base = rng.integers(85, 170) + rng.integers(-12, 13, size=3)
    other = base + rng.choice([-1, 1]) * rng.integers(18, 32)
    tones = (tuple(int(v) for v in base), tuple(int(v) for v in np.clip(other, 0, 255)))
    objects: List[ToyObject] = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(50):
            radius = float(rng.uniform(0.14, 0.23) * size)
            lo, hi = radius * 1.1 + 1, size - radius * 1.1 - 1
            center = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
            if all(
                np.hypot(center[0] - o.center[0], center[1] - o.center[1])
                > 1.15 * (radius + o.radius) + 2
                for o in objects
            ):
                break
        else:
            continue  # no room left: fewer objects
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = tuple(COLORS)[int(rng.integers(len(COLORS)))]
        objects.append(ToyObject(shape, color, center, radius, _angle(rng, shape)))
    return ToyScene(
        size=size,
        texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
        tones=tones,
        period=int(rng.integers(5, 10)),
        orientation=int(rng.integers(3)),
        objects=tuple(objects),
        noise_seed=int(rng.integers(2**31)),
    )


def _angle(rng: np.random.Generator, shape: str) -> float:
    # small jitter only: a square turned by 45 degrees would be a diamond, a cross an "x"
    if shape == "crescent":
        return float(rng.uniform(0, 2 * np.pi))
    return float(np.deg2rad(rng.uniform(-20, 20)))


def twin_scene(scene: ToyScene, rng: np.random.Generator) -> ToyScene:
    """The same layout, colours and background with every object's shape changed.

    The hard negative of contrastive pretraining: only the shapes tell the two apart.
    """
    objects = []
    for o in scene.objects:
        choices = [s for s in SHAPES if s != o.shape]
        shape = choices[int(rng.integers(len(choices)))]
        objects.append(replace(o, shape=shape, angle=_angle(rng, shape)))
    return replace(scene, objects=tuple(objects))


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in object coordinates (unit radius, v up); every shape fits in 1.1 radii."""
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    if shape == "circle":
        return rho <= 1.0
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.78
    if shape == "triangle":  # equilateral, apex up: three half-planes at distance 0.55
        normals = [(np.cos(a), np.sin(a)) for a in np.deg2rad([-90.0, 30.0, 150.0])]
        return np.all([nx * u + ny * v <= 0.55 for nx, ny in normals], axis=0)
    if shape == "star":  # five points; boundary radius linear between tips and notches
        phase = np.mod(theta - np.pi / 2, 2 * np.pi / 5) / (2 * np.pi / 5)
        return rho <= 0.42 + 0.68 * np.abs(2 * phase - 1)
    if shape == "ring":
        return (rho <= 1.0) & (rho >= 0.58)
    if shape == "cross":
        return ((abs(u) <= 0.3) & (abs(v) <= 0.95)) | ((abs(v) <= 0.3) & (abs(u) <= 0.95))
    if shape == "diamond":
        return abs(u) / 0.68 + abs(v) / 1.02 <= 1.0
    if shape == "crescent":
        return (rho <= 1.0) & (np.hypot(u - 0.5, v) > 0.8)
    raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")


def render_scene(scene: ToyScene) -> Tuple[np.ndarray, np.ndarray]:
    """Draw a scene.

    Returns:
        tuple: image (H, W, 3) uint8 RGB and label (H, W) uint8 (0 background, 1-8 shapes).
    """
    size, p = scene.size, scene.period
    y, x = _grid(size)
    if scene.texture == "plain":
        second = np.zeros((size, size), bool)
    elif scene.texture == "striped":
        coord = (y, x, x + y)[scene.orientation]
        second = np.floor(coord / p).astype(int) % 2 == 1
    elif scene.texture == "checkered":
        second = (np.floor(x / p) + np.floor(y / p)).astype(int) % 2 == 1
    else:  # dotted
        second = np.hypot(np.mod(x, p) - p / 2, np.mod(y, p) - p / 2) <= 1.6
    image = np.where(second[..., None], scene.tones[1], scene.tones[0]).astype(np.float32)
    label = np.zeros((size, size), np.uint8)
    for o in scene.objects:
        # only the object's bounding box (every shape fits in 1.1 radii) is tested
        r = o.radius * 1.1
        y0, y1 = max(int(o.center[0] - r), 0), min(int(np.ceil(o.center[0] + r)), size)
        x0, x1 = max(int(o.center[1] - r), 0), min(int(np.ceil(o.center[1] + r)), size)
        yy, xx = y[y0:y1, x0:x1], x[y0:y1, x0:x1]
        c, s = np.cos(o.angle), np.sin(o.angle)
        dx, dy = (xx - o.center[1]) / o.radius, (o.center[0] - yy) / o.radius
        inside = _shape_mask(o.shape, c * dx + s * dy, -s * dx + c * dy)
        image[y0:y1, x0:x1][inside] = COLORS[o.color]
        label[y0:y1, x0:x1][inside] = CLASSES.index(o.shape)
    noise = np.random.default_rng(scene.noise_seed).normal(0, 4.0, image.shape)
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8), label


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    y.flags.writeable = x.flags.writeable = False
    return y, x


def caption_scene(scene: ToyScene, rng: np.random.Generator, num: int = 1) -> List[str]:
    """``num`` captions naming every object's shape; each drops the colours with p = 1/2."""
    captions = []
    for _ in range(num):
        with_color = bool(rng.random() < 0.5)
        phrases = []
        for i in rng.permutation(len(scene.objects)):
            o = scene.objects[int(i)]
            words = f"{o.color} {o.shape}" if with_color else o.shape
            phrases.append(("an " if words[0] in "aeiou" else "a ") + words)
        if len(phrases) == 1:
            objs = phrases[0]
        else:
            objs = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        captions.append(template.format(objs, scene.texture))
    return captions


def generate_sample(
    seed: int, stream: str, index: int, size: int = 64, num_captions: int = 3
) -> Tuple[np.ndarray, np.ndarray, List[str], ToyScene]:
    """The ``index``-th sample of a stream ("training", "validation" or "pretrain").

    Returns:
        tuple: image (H, W, 3) uint8, label (H, W) uint8, captions, the scene.
    """
    rng = sample_rng(seed, stream, index)
    scene = sample_scene(rng, size)
    image, label = render_scene(scene)
    return image, label, caption_scene(scene, rng, num_captions), scene


# ------------------------------------------------------------------------- on disk
_DIRS = {"train": "training", "val": "validation"}
_SUBDIRS = ("images", "annotations_detectron2")


def _image_id(stream: str, index: int) -> str:
    return f"toy_{'train' if stream == 'training' else 'val'}_{index:06d}"


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


def _read_manifest(folder: Path) -> Optional[dict]:
    try:
        with open(folder / "manifest.json", encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


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
    from .toy_world_instances import build_toy_instances  # derived files, own manifest

    build_toy_instances(folder, params)
    return folder


# ------------------------------------------------------------------------- registration
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
    from .toy_world_instances import register_toy_world_instances

    register_toy_world_instances(root, prefix, unseen)


def register_all_toy_world(root: str) -> None:
    """Register every shipped split: "a" as ``toy_world_*``, others as ``toy_world_<s>_*``."""
    for split, unseen in SPLITS.items():
        register_toy_world(root, "toy_world" if split == "a" else f"toy_world_{split}", unseen)


register_all_toy_world(datasets_root())


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None, help="dataset root (default $DETECTRON2_DATASETS)")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
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
