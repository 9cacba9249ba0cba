"""One-image fixtures of the real benchmarks in their official raw layouts, converted by the
real ``datasets/prepare_*.py``: what a full-size config's ``--eval-only`` reads.

``write_raw_coco`` (COCO panoptic, instances, captions and COCO-Stuff stuffthingmaps),
``write_raw_voc`` (VOC 2012) and ``write_raw_ade20k`` (ADE20K-150 with its instance PNGs)
write one square image per split; ``prepare_datasets`` runs the prepare scripts over them.
Each image holds a stuff region on top and three objects below: a seen class and, in every
benchmark's zero-shot split, an unseen one.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ovseg.data.datasets.categories import COCO_PANOPTIC_CATEGORIES
from ovseg.evaluation.panoptic_quality import id2rgb
from ovseg_testing.paths import ROOT

SIZE = 64  # square images: the configs' test resize makes the real input size anyway
# columns of the three objects in the bottom half; the top half is stuff
COLUMNS = (slice(0, 20), slice(22, 42), slice(44, 64))
# COCO: person (seen everywhere), cow (unseen in FreeSeg 156/15 and XPM 48/17), dog (unseen
# in XPM 48/17); stuff sky-other-merged (panoptic 187) / sky-other (COCO-Stuff 157)
COCO_OBJECTS = (1, 21, 18)
COCO_SKY_PANOPTIC, COCO_SKY_STUFF = 187, 157
# VOC ids 1..20 (0 background): cat (8, seen), sofa (18, unseen), dog (12, seen)
VOC_OBJECTS = (8, 18, 12)
# ADE20K: SceneParse150 ids 1..150 with their instance class (annotations_instance R):
# bed (8 / 1), table (16, unseen / 6), chair (20 / 8); stuff: sky (3)
ADE_OBJECTS = ((8, 1), (16, 6), (20, 8))
ADE_SKY = 3


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def _png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:  # VOC's SegmentationClass: a palette PNG
        image = Image.fromarray(array, mode="L").convert("P")
    image.save(path)


def _label(stuff: int, objects: Sequence[int], void: int) -> np.ndarray:
    label = np.full((SIZE, SIZE), void, np.uint32)
    label[: SIZE // 2] = stuff
    for value, cols in zip(objects, COLUMNS):
        label[SIZE // 2 :, cols] = value
    return label


def _box(mask: np.ndarray) -> list:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]


def write_raw_coco(root: Path) -> Path:
    """``<root>/coco`` as downloaded: {train,val}2017 images, panoptic PNGs and jsons,
    instance and caption jsons, COCO-Stuff stuffthingmaps (COCO id - 1, 255 unlabelled)."""
    coco = root / "coco"
    things = [c for c in COCO_PANOPTIC_CATEGORIES if c["isthing"]]
    seg_ids = (1001, 2001, 3001)
    pan = _label(5000, seg_ids, 0)
    stuffmap = _label(COCO_SKY_STUFF - 1, [c - 1 for c in COCO_OBJECTS], 255).astype(np.uint8)
    for i, split in enumerate(("train2017", "val2017")):
        stem = f"{i + 1:012d}"
        _image(coco / split / f"{stem}.jpg", i)
        _png(coco / f"panoptic_{split}" / f"{stem}.png", id2rgb(pan))
        _png(coco / "stuffthingmaps" / split / f"{stem}.png", stuffmap)
        image = {"id": i + 1, "file_name": f"{stem}.jpg", "height": SIZE, "width": SIZE}
        segments = [{"id": 5000, "category_id": COCO_SKY_PANOPTIC, "iscrowd": 0}]
        instances = []
        for seg_id, cat in zip(seg_ids, COCO_OBJECTS):
            mask = pan == seg_id
            info = {"category_id": cat, "iscrowd": 0, "area": int(mask.sum()), "bbox": _box(mask)}
            segments.append({"id": seg_id, **info})
            x, y, w, h = info["bbox"]
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            instances.append(
                {**info, "id": len(instances) + 1, "image_id": i + 1, "segmentation": [polygon]}
            )
        for seg in segments:
            seg.setdefault("area", int((pan == seg["id"]).sum()))
            seg.setdefault("bbox", _box(pan == seg["id"]))
        ann = {"image_id": i + 1, "file_name": f"{stem}.png", "segments_info": segments}
        files = {
            f"panoptic_{split}.json": {
                "images": [image],
                "annotations": [ann],
                "categories": COCO_PANOPTIC_CATEGORIES,
            },
            f"instances_{split}.json": {
                "images": [image],
                "annotations": instances,
                "categories": things,
            },
            f"captions_{split}.json": {
                "images": [image],
                "annotations": [{"id": 1, "image_id": i + 1, "caption": "A man, a cow and a dog."}],
            },
        }
        for name, data in files.items():
            (coco / "annotations").mkdir(parents=True, exist_ok=True)
            (coco / "annotations" / name).write_text(json.dumps(data))
    return coco


def write_raw_voc(root: Path) -> Path:
    """``<root>/VOCdevkit/VOC2012`` as downloaded: JPEGImages, palette SegmentationClass
    (0 background, 255 boundary) and the train / val lists."""
    voc = root / "VOCdevkit" / "VOC2012"
    label = _label(0, VOC_OBJECTS, 255).astype(np.uint8)
    for i, split in enumerate(("train", "val")):
        stem = f"2007_{i:06d}"
        _image(voc / "JPEGImages" / f"{stem}.jpg", i)
        _png(voc / "SegmentationClass" / f"{stem}.png", label, palette=True)
        lists = voc / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text(f"{stem}\n")
    return voc


def write_raw_ade20k(root: Path) -> Path:
    """``<root>/ADEChallengeData2016`` as downloaded: images, annotations (0 other, 1..150)
    and annotations_instance (R instance class, G instance id)."""
    ade = root / "ADEChallengeData2016"
    semantic = _label(ADE_SKY, [s for s, _ in ADE_OBJECTS], 0).astype(np.uint8)
    instance = np.zeros((SIZE, SIZE, 3), np.uint8)
    for k, ((_, ins_class), cols) in enumerate(zip(ADE_OBJECTS, COLUMNS)):
        instance[SIZE // 2 :, cols, 0] = ins_class
        instance[SIZE // 2 :, cols, 1] = k + 1
    for i, (split, prefix) in enumerate((("training", "train"), ("validation", "val"))):
        stem = f"ADE_{prefix}_{i + 1:08d}"
        _image(ade / "images" / split / f"{stem}.jpg", i)
        _png(ade / "annotations" / split / f"{stem}.png", semantic)
        _png(ade / "annotations_instance" / split / f"{stem}.png", instance)
    return ade


PREPARE = {
    "coco": (
        write_raw_coco,
        ("prepare_coco_panoptic", "prepare_coco_stuff_sem_seg", "prepare_coco_instance_48_17"),
    ),
    "voc": (write_raw_voc, ("prepare_voc_sem_seg",)),
    "ade20k": (write_raw_ade20k, ("prepare_ade20k_sem_seg", "prepare_ade20k_panoptic")),
}


def prepare_datasets(root: Path, names: Sequence[str] = tuple(PREPARE)) -> Path:
    """Write the raw fixtures ``names`` (``coco``, ``voc``, ``ade20k``) under ``root`` and
    convert them with the real prepare scripts; returns ``root`` (a DETECTRON2_DATASETS)."""
    if str(ROOT / "datasets") not in sys.path:  # the scripts import their prepare_utils
        sys.path.insert(0, str(ROOT / "datasets"))
    for name in names:
        write, scripts = PREPARE[name]
        write(root)
        for script in scripts:
            importlib.import_module(script).main(["--root", str(root)])
    return root
