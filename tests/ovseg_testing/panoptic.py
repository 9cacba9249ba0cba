"""A tiny panoptic + instance dataset in the COCO on-disk layout, registered for a while.

One 8x8 image: sky (stuff, top half), a cat (rows 4-7, cols 0-2), VOID (col 3), a dog (cols
4-6, unseen) and a crowd of cats (col 7).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data.datasets.instance_common import register_instance_split, register_panoptic_split

CATEGORIES = [
    {"id": 1, "name": "cat", "isthing": 1},
    {"id": 2, "name": "dog", "isthing": 1},
    {"id": 5, "name": "sky", "isthing": 0},
]
UNSEEN_IDS = (2,)
SEGMENTS = [  # id, category, crowd, (rows, cols)
    (5000, 5, 0, (slice(0, 4), slice(0, 8))),
    (1001, 1, 0, (slice(4, 8), slice(0, 3))),
    (2001, 2, 0, (slice(4, 8), slice(4, 7))),
    (1002, 1, 1, (slice(4, 8), slice(7, 8))),
]
PANOPTIC, INSTANCE = "tiny_panoptic_test", "tiny_instance_test"


def panoptic_ids() -> np.ndarray:
    ids = np.zeros((8, 8), dtype=np.int64)
    for seg_id, _, _, where in SEGMENTS:
        ids[where] = seg_id
    return ids


def segment_mask(seg_id: int) -> np.ndarray:
    return panoptic_ids() == seg_id


def _rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def write_tiny_panoptic(root: Path) -> Path:
    """Write image, panoptic PNG + json and an instance json (RLE) under ``root/coco``."""
    from pycocotools import mask as mask_util

    coco = root / "coco"
    for d in ("val2017", "panoptic_val2017", "annotations"):
        (coco / d).mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(coco / "val2017/000000000001.jpg", quality=100)
    ids = panoptic_ids()
    Image.fromarray(_rgb(ids)).save(coco / "panoptic_val2017/000000000001.png")
    image = {"id": 1, "file_name": "000000000001.jpg", "height": 8, "width": 8}
    segments, instances = [], []
    for seg_id, cat, crowd, _ in SEGMENTS:
        mask = ids == seg_id
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]
        info = {"id": seg_id, "category_id": cat, "iscrowd": crowd, "area": int(mask.sum())}
        segments.append({**info, "bbox": box})
        if cat != 5:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            instances.append(
                {**info, "id": len(instances) + 1, "image_id": 1, "bbox": box, "segmentation": rle}
            )
    ann = {"image_id": 1, "file_name": "000000000001.png", "segments_info": segments}
    pan = {"images": [image], "annotations": [ann], "categories": CATEGORIES}
    (coco / "annotations/panoptic_val2017.json").write_text(json.dumps(pan))
    things = [c for c in CATEGORIES if c["isthing"]]
    ins = {"images": [image], "annotations": instances, "categories": things}
    (coco / "annotations/instances_val2017.json").write_text(json.dumps(ins))
    return coco


@contextmanager
def registered_tiny_panoptic(root: Path) -> Iterator[Path]:
    """Write the dataset and register it as ``tiny_panoptic_test`` / ``tiny_instance_test``."""
    coco = write_tiny_panoptic(root)
    register_panoptic_split(
        PANOPTIC,
        categories=CATEGORIES,
        unseen_ids=UNSEEN_IDS,
        image_root=str(coco / "val2017"),
        panoptic_root=str(coco / "panoptic_val2017"),
        panoptic_json=str(coco / "annotations/panoptic_val2017.json"),
        sem_seg_root=None,
        instances_json=str(coco / "annotations/instances_val2017.json"),
        prepare_script="prepare_coco_panoptic.py",
    )
    register_instance_split(
        INSTANCE,
        categories=[c for c in CATEGORIES if c["isthing"]],
        unseen_ids=UNSEEN_IDS,
        image_root=str(coco / "val2017"),
        json_file=str(coco / "annotations/instances_val2017.json"),
        prepare_script="prepare_coco_instance_48_17.py",
    )
    try:
        yield coco
    finally:
        for name in (PANOPTIC, INSTANCE):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
