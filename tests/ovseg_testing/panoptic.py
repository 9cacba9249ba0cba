"""A tiny panoptic + instance dataset in the COCO on-disk layout, registered for a while.

One 8x8 image: sky (stuff, top half), a cat (rows 4-7, cols 0-2), VOID (col 3), a dog (cols
4-6, unseen) and a crowd of cats (col 7). With ``num_images`` > 1, image k (id k + 1) holds the
same segments, mirrored left-right when k is odd; :func:`panoptic_output` and
:func:`instance_output` make a model's outputs for any of them.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BitMasks, Instances

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
CONTIGUOUS = {1: 0, 2: 1, 5: 2}  # dataset id -> index in stuff_classes (cat, dog, sky)


def panoptic_ids(image: int = 0) -> np.ndarray:
    """(8, 8) segment ids of image ``image`` (odd images are mirrored left-right)."""
    ids = np.zeros((8, 8), dtype=np.int64)
    for seg_id, _, _, where in SEGMENTS:
        ids[where] = seg_id
    return ids[:, ::-1].copy() if image % 2 else ids


def segment_mask(seg_id: int) -> np.ndarray:
    return panoptic_ids() == seg_id


def _rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def panoptic_output(image: int = 0, drop=()) -> dict:
    """A model's ``panoptic_seg`` output for image ``image``: its segments but crowds and
    those of the dataset category ids in ``drop``."""
    ids = panoptic_ids(image)
    segments = []
    for seg_id, cat, crowd, _ in SEGMENTS:
        if crowd or cat in drop:
            ids[ids == seg_id] = 0
            continue
        segments.append({"id": seg_id, "category_id": CONTIGUOUS[cat], "isthing": cat != 5})
    return {"panoptic_seg": (torch.as_tensor(ids, dtype=torch.int32), segments)}


def instance_output(image: int = 0, drop=(), score: float = 1.0) -> dict:
    """A model's ``instances`` output for image ``image``: its non-crowd things but those of
    the dataset category ids in ``drop``, each scored ``score``."""
    ids = panoptic_ids(image)
    keep = [(i, c) for i, c, crowd, _ in SEGMENTS if c != 5 and not crowd and c not in drop]
    inst = Instances((8, 8))
    inst.pred_masks = torch.as_tensor(np.stack([ids == i for i, _ in keep]))
    inst.pred_classes = torch.tensor([CONTIGUOUS[c] for _, c in keep])
    inst.scores = torch.full((len(keep),), float(score))
    inst.pred_boxes = BitMasks(inst.pred_masks).get_bounding_boxes()
    return {"instances": inst}


def write_tiny_panoptic(root: Path, num_images: int = 1) -> Path:
    """Write images, panoptic PNGs + json, semantic label PNGs (``panoptic_semseg_val2017``:
    every segment's class, crowd included, VOID 255, as Mask2Former's) and an instance json
    (polygons, crowd RLE) under ``root/coco``."""
    from pycocotools import mask as mask_util

    coco = root / "coco"
    for d in ("val2017", "panoptic_val2017", "panoptic_semseg_val2017", "annotations"):
        (coco / d).mkdir(parents=True, exist_ok=True)
    images, anns, instances = [], [], []
    for k in range(num_images):
        stem = f"{k + 1:012d}"
        pixels = np.random.default_rng(k).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(coco / f"val2017/{stem}.jpg", quality=100)
        ids = panoptic_ids(k)
        Image.fromarray(_rgb(ids)).save(coco / f"panoptic_val2017/{stem}.png")
        semantic = np.full(ids.shape, 255, dtype=np.uint8)
        for seg_id, cat, _, _ in SEGMENTS:
            semantic[ids == seg_id] = CONTIGUOUS[cat]
        Image.fromarray(semantic).save(coco / f"panoptic_semseg_val2017/{stem}.png")
        images.append({"id": k + 1, "file_name": f"{stem}.jpg", "height": 8, "width": 8})
        segments = []
        for seg_id, cat, crowd, _ in SEGMENTS:
            mask = ids == seg_id
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]
            info = {"id": seg_id, "category_id": cat, "iscrowd": crowd, "area": int(mask.sum())}
            segments.append({**info, "bbox": box})
            if cat != 5:  # as COCO: polygons (the rectangle's corners), crowd regions RLE
                x, y, w, h = box
                segm = [[x, y, x + w, y, x + w, y + h, x, y + h]]
                if crowd:
                    segm = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                    segm["counts"] = segm["counts"].decode()
                instance = {"id": len(instances) + 1, "image_id": k + 1, "bbox": box}
                instances.append({**info, **instance, "segmentation": segm})
        anns.append({"image_id": k + 1, "file_name": f"{stem}.png", "segments_info": segments})
    pan = {"images": images, "annotations": anns, "categories": CATEGORIES}
    (coco / "annotations/panoptic_val2017.json").write_text(json.dumps(pan))
    things = [c for c in CATEGORIES if c["isthing"]]
    ins = {"images": images, "annotations": instances, "categories": things}
    (coco / "annotations/instances_val2017.json").write_text(json.dumps(ins))
    return coco


@contextmanager
def registered_tiny_panoptic(
    root: Path, num_images: int = 1, *, write: bool = True, sem_seg: bool = False
) -> Iterator[Path]:
    """Write the dataset (unless ``write`` is False: processes sharing one copy) and register
    it as ``tiny_panoptic_test`` / ``tiny_instance_test``; with ``sem_seg``, the panoptic set
    with its semantic label folder (as ``coco_2017_*_panoptic_with_sem_seg``)."""
    coco = write_tiny_panoptic(root, num_images) if write else Path(root) / "coco"
    register_panoptic_split(
        PANOPTIC,
        categories=CATEGORIES,
        unseen_ids=UNSEEN_IDS,
        image_root=str(coco / "val2017"),
        panoptic_root=str(coco / "panoptic_val2017"),
        panoptic_json=str(coco / "annotations/panoptic_val2017.json"),
        sem_seg_root=str(coco / "panoptic_semseg_val2017") if sem_seg else None,
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
