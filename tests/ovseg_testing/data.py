"""Test data: small datasets in real on-disk layouts (registered for a while), images,
hand-built batches, and the real dataset mappers in the settings the tests use."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from detectron2.data import transforms as T

from ovseg.data.dataset_mappers import SemanticDatasetMapper
from ovseg.data.dataset_mappers.semantic import zero_shot_label_map
from ovseg.data.datasets.common import datasets_root
from ovseg.data.datasets.register_ade20k import register_all_ade20k
from ovseg.data.datasets.toy_world import build_toy_world, register_all_toy_world
from ovseg.pseudo import PseudoLabelStore
from ovseg.vocab import Vocabulary

ADE = Vocabulary.builtin("ade150")
SKY, BED, GRASS, TABLE = 2, 7, 9, 15  # ADE-150 indices; grass and table are unseen in its split


# ---------------------------------------------------------------- datasets on disk
def write_ade20k_fixture(root: Path, n_train: int = 4, n_val: int = 2, size: int = 64) -> Path:
    """ADEChallengeData2016 after ``datasets/prepare_ade20k_sem_seg.py``: JPEG images and
    label PNGs with contiguous ids 0-149 and 255 = ignore. Each image is two flat colour
    regions whose classes are learnable from colour alone. Returns ``root``."""
    rng = np.random.default_rng(0)
    base = root / "ADEChallengeData2016"
    for split, n in (("training", n_train), ("validation", n_val)):
        img_dir = base / "images" / split
        gt_dir = base / "annotations_detectron2" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cut = int(rng.integers(size // 4, 3 * size // 4))
            label = np.full((size, size), 2, np.uint8)
            label[:, cut:] = 7
            label[:2, :2] = 255
            image = np.zeros((size, size, 3), np.uint8)
            image[label == 2] = (200, 40, 40)
            image[label == 7] = (40, 40, 200)
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{i:08d}"
            Image.fromarray(image).save(img_dir / f"{stem}.jpg", quality=95)
            Image.fromarray(label).save(gt_dir / f"{stem}.png")
    return root


@contextmanager
def registered_ade20k(root: Path) -> Iterator[Path]:
    """ADE20K's splits registered under ``root`` (a dataset root), then back under the
    default root that importing ovseg registered."""
    register_all_ade20k(str(root))
    try:
        yield root
    finally:
        register_all_ade20k(datasets_root())


@contextmanager
def registered_toy_world(root: Path, num_train: int = 4, num_val: int = 2) -> Iterator[Path]:
    """A seeded toy world built under ``root`` and registered, then the default root again."""
    build_toy_world(str(root), num_train=num_train, num_val=num_val, seed=0)
    register_all_toy_world(str(root))
    try:
        yield root
    finally:
        register_all_toy_world(datasets_root())


def write_unseen_fixture(root: Path, n: int = 3, size=(40, 52)) -> List[dict]:
    """ADE20K-layout images whose labels hold seen (sky, bed) and unseen (grass, table)
    classes, coloured so a position- and colour-dependent teacher tells them apart.
    Returns the training dataset dicts."""
    rng = np.random.default_rng(3)
    h, w = size
    img_dir = root / "images"
    gt_dir = root / "labels"
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    dicts = []
    for i in range(n):
        label = np.full((h, w), SKY, np.uint8)
        label[:, w // 2 :] = BED
        y, x = int(rng.integers(2, h - 26)), int(rng.integers(2, w - 26))
        label[y : y + 16, x : x + 24] = GRASS
        label[-10:, :20] = TABLE
        label[:2, :2] = 255
        image = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        for cls, colour in ((SKY, (60, 90, 230)), (BED, (200, 40, 40)), (GRASS, (40, 190, 40))):
            image[label == cls] += np.array(colour, np.uint8) // 2
        image[label == TABLE] += np.array((120, 100, 20), np.uint8)
        stem = f"img_{i:03d}"
        Image.fromarray(image).save(img_dir / f"{stem}.png")
        Image.fromarray(label).save(gt_dir / f"{stem}.png")
        dicts.append(
            {
                "file_name": str(img_dir / f"{stem}.png"),
                "sem_seg_file_name": str(gt_dir / f"{stem}.png"),
                "image_id": stem,
            }
        )
    return dicts


def write_random_images(folder: Path, n: int = 6, size=(12, 17)) -> List[dict]:
    """``n`` random RGB PNGs (H, W = size) and their dataset dicts, in shuffled order."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    dicts = []
    for i in range(n):
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        dicts.append({"file_name": str(path), "image_id": f"img_{i:03d}"})
    return [dicts[i] for i in rng.permutation(n)]


def write_two_region_image(path: Path, height: int = 48, width: int = 64) -> Path:
    """A two-region RGB PNG (red left, green right)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (200, 40, 40)
    image[:, width // 2 :] = (40, 160, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


# ---------------------------------------------------------------- images and batches
def random_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(3, h, w) uint8 RGB, as a mapper gives a model."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def random_image_batch(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(b, 3, h, w) float images in [0, 255], as the CLIP teacher takes them."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 255


def two_region_batch(names=("red thing", "blue thing", "green thing"), n: int = 2, size: int = 32):
    """Training inputs whose label is a function of colour: left red = 0, right blue = 1,
    a green square = 2, and an ignored corner."""
    inputs = []
    for i in range(n):
        cut = size // 3 + i * 3
        img = torch.zeros(3, size, size, dtype=torch.uint8)
        label = torch.zeros(size, size, dtype=torch.long)
        img[0, :, :cut] = 220
        img[2, :, cut:] = 220
        label[:, cut:] = 1
        img[:, 4:12, 20:28] = torch.tensor([30, 200, 30], dtype=torch.uint8)[:, None, None]
        label[4:12, 20:28] = 2
        label[:3, :3] = 255
        inputs.append({"image": img, "sem_seg": label, "vocabulary": list(names)})
    return inputs


def position_pattern(h: int, w: int, modulo: int) -> np.ndarray:
    """A label where nearly every pixel differs from its neighbours: alignment shows."""
    y, x = np.mgrid[:h, :w]
    return ((7 * y + 3 * x + (x * y) % 5) % modulo).astype(np.int64)


# ---------------------------------------------------------------- the real mappers
def eval_mapper(vocabulary: Sequence[str]) -> SemanticDatasetMapper:
    """The real mapper in test mode without resizing (outputs keep the image size), as
    pseudo-label stores are generated with."""
    return SemanticDatasetMapper.unresized(vocabulary)


def padded_train_mapper(names, crop=(20, 24), ignore_label=255) -> SemanticDatasetMapper:
    """The real training mapper with a resize, a random crop, a certain flip and padding."""
    return SemanticDatasetMapper(
        is_train=True,
        augmentations=[
            T.ResizeShortestEdge((40,), max_size=1000, sample_style="choice"),
            T.RandomCrop("absolute", crop),
            T.RandomFlip(prob=1.0, horizontal=True),
        ],
        image_format="RGB",
        ignore_label=ignore_label,
        size_divisibility=32,
        vocabulary=names,
    )


def zero_shot_train_mapper(
    setting: str = "transductive",
    augmentations: Sequence = (),
    store: Optional[PseudoLabelStore] = None,
) -> SemanticDatasetMapper:
    """The real training mapper on ADE-150 names in a zero-shot setting, no padding; with a
    ``store``, its labels are translated into training indices as the loader's mapper does
    (DATASETS.PSEUDO_LABELS)."""
    table, vocabulary = zero_shot_label_map(
        ADE.names, unseen=ADE.unseen, setting=setting, ignore_label=255
    )
    return SemanticDatasetMapper(
        is_train=True,
        augmentations=list(augmentations),
        image_format="RGB",
        ignore_label=255,
        size_divisibility=-1,
        vocabulary=vocabulary,
        label_map=table,
        pseudo_label_map=store.label_map_to(vocabulary, 255) if store is not None else None,
    )


def crop_flip_augmentations():
    """A resize, a random crop and a certain flip: nothing lines up by accident."""
    return [
        T.ResizeShortestEdge((56,), max_size=1000, sample_style="choice"),
        T.RandomCrop("absolute", (36, 44)),
        T.RandomFlip(prob=1.0, horizontal=True),
    ]


# ---------------------------------------------------------------- few-shot-style benchmarks
def write_fewshot_fixture(root: Path, size: int = 64) -> Path:
    """PASCAL-5i and COCO-20i in miniature: VOC (``SegmentationClassAug``) and HSNet's
    ``COCO2014`` layouts, two images per fold and split, and the JSON fold lists
    ``datasets/prepare_fewshot_splits.py`` writes. Each mask shows its class (+1) on the
    left half, 255 on one column."""
    from ovseg.data.datasets.fewshot import fold_class_ids
    from ovseg.data.datasets.fewshot_splits import write_split_json

    def write(image: Path, mask: Path, class_id: int, seed: int) -> None:
        image.parent.mkdir(parents=True, exist_ok=True)
        mask.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(image)
        label = np.zeros((size, size), np.uint8)
        label[:, : size // 2] = class_id + 1
        label[:, size // 2] = 255
        Image.fromarray(label).save(mask)

    voc = root / "VOCdevkit" / "VOC2012"
    coco = root / "COCO2014"
    for fold in range(4):
        for split, folder in (("trn", "train2014"), ("val", "val2014")):
            pairs, classwise = [], {}
            for i in range(2):
                c = fold_class_ids(20, fold, "block")[i]
                stem = f"{split}{fold}_{i}"
                write(
                    voc / "JPEGImages" / f"{stem}.jpg",
                    voc / "SegmentationClassAug" / f"{stem}.png",
                    c,
                    i,
                )
                pairs.append((stem, c))
                novel = fold_class_ids(80, fold, "interleaved")
                base = [k for k in range(80) if k not in novel]
                cc = (novel if split == "val" else [b for b in base if b % 4 == (fold + 1) % 4])[i]
                rel = f"{folder}/COCO_{stem}.jpg"
                write(coco / rel, coco / "annotations" / rel.replace(".jpg", ".png"), cc, i)
                classwise[cc] = [rel]
            write_split_json(root, "pascal5i", split, fold, pairs, source="fixture")
            write_split_json(root, "coco20i", split, fold, classwise, source="fixture")
    return root


def write_fss_fixture(root: Path, size: int = 32, images: int = 1) -> Path:
    """FSS-1000 in miniature, in HSNet's layout: every class folder
    ``FSS-1000/<class>/<n>.jpg`` with ``images`` images and their RGB masks ``<n>.png``:
    white (the class) on the left half, grey 128 (the class) and 127 (not) on two columns."""
    from ovseg.vocab import Vocabulary

    rng = np.random.default_rng(0)
    mask = np.zeros((size, size, 3), np.uint8)
    mask[:, : size // 2] = 255
    mask[:, size // 2] = 128
    mask[:, size // 2 + 1] = 127
    for name in Vocabulary.builtin("fss1000").names:
        folder = root / "FSS-1000" / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, images + 1):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{n}.jpg")
            Image.fromarray(mask).save(folder / f"{n}.png")
    return root


def register_fewshot(root: str) -> None:
    """(Re-)register PASCAL-5i, COCO-20i and FSS-1000 under ``root``, as ovseg's import does."""
    from ovseg.data.datasets.fewshot import register_fewshot_benchmark
    from ovseg.data.datasets.fss1000 import register_fss1000

    register_fss1000(root)

    register_fewshot_benchmark(
        "pascal5i", root, vocabulary_name="voc20", rule="block", test_ignores_boundary=True
    )
    register_fewshot_benchmark(
        "coco20i", root, vocabulary_name="coco80", rule="interleaved", test_ignores_boundary=False
    )


@contextmanager
def registered_fewshot(root: Path) -> Iterator[Path]:
    """The few-shot fixture written and registered under ``root``, then the default root again."""
    write_fewshot_fixture(root)
    write_fss_fixture(root)
    register_fewshot(str(root))
    try:
        yield root
    finally:
        register_fewshot(datasets_root())
