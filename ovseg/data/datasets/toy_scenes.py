"""The toy world's samples: scenes of coloured shapes, drawn, rendered and captioned.

Every sample is a pure function of ``(seed, stream, index)`` (:func:`generate_sample`); the
semantic world (:mod:`ovseg.data.datasets.toy_world`) and its instances
(:mod:`ovseg.data.datasets.toy_world_instances`) write them to disk under the names given
here (:func:`_image_id`, ``_DIRS``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import List, Tuple

import numpy as np

__all__ = [
    "CLASSES", "COLORS", "SHAPES", "STREAMS", "TEXTURES", "ToyObject", "ToyScene",
    "caption_scene", "generate_sample", "render_scene", "sample_rng", "sample_scene",
    "twin_scene",
]  # fmt: skip

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "crescent")
CLASSES = ("background",) + SHAPES
COLORS = {
    "red": (215, 35, 35), "green": (35, 165, 55), "blue": (40, 75, 220),
    "yellow": (235, 205, 30), "purple": (135, 50, 185), "orange": (240, 125, 25),
    "white": (245, 245, 245), "black": (20, 20, 20),
}  # fmt: skip
TEXTURES = ("plain", "striped", "checkered", "dotted")
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


# the on-disk names of the samples: split -> stream folder, and each sample's file stem
_DIRS = {"train": "training", "val": "validation"}


def _image_id(stream: str, index: int) -> str:
    return f"toy_{'train' if stream == 'training' else 'val'}_{index:06d}"
