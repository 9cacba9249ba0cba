"""Convert ADE20K-150 instance annotations into panoptic and instance sets.

As Mask2Former's ``datasets/prepare_ade20k_{pan,ins}_seg.py``: per image, the stuff classes of
``annotations/`` are pasted first, then every instance of ``annotations_instance/`` (R = ADE
instance class 1..100, G = instance id, 0 = none) with its SceneParse150 class; thing pixels
without an instance stay VOID. Writes ``ade20k_panoptic_{train,val}/`` PNGs +
``ade20k_panoptic_{train,val}.json`` (category id = class 0..149) and
``ade20k_instance_{train,val}.json`` (RLE masks), and FreeSeg's training variant without the
15 unseen classes (``prepare_ade20k_{pan,ins}_seg_novel.py``): ``*_train_base``, with its
semantic labels ``annotations_detectron2/training_base/`` (``prepare_ade20k_sem_seg_novel.py``:
the 135 seen classes renumbered 0..134 in class order, the unseen ones and "other" 255, every
image kept; the labels of ``MODEL.FREESEG.SEMANTIC_TARGETS "sem_seg"``). Segment ids
are ``(class + 1) * 1000 + k`` (k = 0 for stuff, 1.. per instance) instead of panopticapi's
random colours, so a resumed run rebuilds the jsons from the written PNGs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from prepare_ade20k_sem_seg import convert_ade20k_label
from prepare_utils import (
    ensure_label_counts,
    list_files,
    make_lut,
    require,
    rgb_to_ids,
    root_parser,
    run_jobs,
    run_script,
    save_label,
    save_panoptic,
    segment_info,
)
from tqdm import tqdm

from ovseg.data.datasets.categories import (
    ADE20K_CATEGORIES,
    ADE20K_INSTANCE_TO_SEMANTIC,
    ADE20K_UNSEEN_IDS,
)
from ovseg.utils.io import atomic_write_json

_INSTANCE_LUT = np.full(256, 255, dtype=np.uint8)
for _ins, _sem in ADE20K_INSTANCE_TO_SEMANTIC.items():
    _INSTANCE_LUT[_ins] = _sem - 1
THINGS = {c["id"] for c in ADE20K_CATEGORIES if c["isthing"]}
# 0..149 -> the seen classes' contiguous ids (FreeSeg's BASE_ID order), 255 for the rest
_BASE_LUT = make_lut(
    [c["id"] for c in ADE20K_CATEGORIES if c["id"] not in ADE20K_UNSEEN_IDS], 256, 255, np.uint8
)


def panoptic_ids(semantic: np.ndarray, instance: np.ndarray, kept: set) -> np.ndarray:
    """(H, W) segment ids of one image from its semantic (0..150) and instance (RGB) PNGs."""
    out = np.zeros(semantic.shape, dtype=np.uint32)
    classes = semantic.astype(np.int64) - 1
    for cat in np.unique(classes):
        if cat >= 0 and cat not in THINGS and cat in kept:
            out[classes == cat] = (cat + 1) * 1000
    cats = _INSTANCE_LUT[instance[..., 0]]
    for k, ins in enumerate(i for i in np.unique(instance[..., 1]) if i != 0):
        mask = instance[..., 1] == ins
        found = np.unique(cats[mask])
        if len(found) != 1 or found[0] == 255:
            raise ValueError(f"instance {ins} has classes {found.tolist()}")
        if int(found[0]) in kept:
            out[mask] = (int(found[0]) + 1) * 1000 + k + 1
    return out


def measure(ids: np.ndarray, image_id: str, rle_encode) -> tuple[list, list]:
    """(segments_info, instance annotations without ids) of one written panoptic PNG."""
    segments, instances = [], []
    for seg_id in np.unique(ids):
        if seg_id == 0:
            continue
        mask = ids == seg_id
        info = segment_info(mask, seg_id, seg_id // 1000 - 1)
        segments.append(info)
        if seg_id % 1000:
            rle = rle_encode(np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0]
            rle["counts"] = rle["counts"].decode("utf-8")
            instances.append(
                {"image_id": image_id, "category_id": info["category_id"], "iscrowd": 0,
                 "bbox": info["bbox"], "area": info["area"], "segmentation": rle}
            )  # fmt: skip
    return segments, instances


def convert_split(root: Path, split: str, dirname: str, suffix: str) -> None:
    from pycocotools import mask as mask_util

    kept = {c["id"] for c in ADE20K_CATEGORIES if not suffix or c["id"] not in ADE20K_UNSEEN_IDS}
    images = list_files(root / "images" / dirname, "*.jpg", "ADE20K images")
    sem_dir = require(root / "annotations" / dirname, "ADE20K annotations")
    ins_dir = require(root / "annotations_instance" / dirname, "ADE20K instance annotations")
    out_dir = root / f"ade20k_panoptic_{split}{suffix}"

    def convert(stem, dst):
        with Image.open(sem_dir / f"{stem}.png") as s, Image.open(ins_dir / f"{stem}.png") as i:
            save_panoptic(panoptic_ids(np.asarray(s), np.asarray(i.convert("RGB")), kept), dst)

    run_jobs(
        [(p.stem, out_dir / f"{p.stem}.png") for p in images], convert, f"ADE20K {split}{suffix}"
    )
    cats = [c for c in ADE20K_CATEGORIES if c["id"] in kept]
    pan = {"images": [], "annotations": [], "categories": cats}
    ins = {
        "images": pan["images"],
        "annotations": [],
        "categories": [c for c in cats if c["isthing"]],
    }
    for p in tqdm(images, desc=f"ADE20K {split}{suffix} jsons", unit="img"):
        with Image.open(out_dir / f"{p.stem}.png") as f:
            ids = rgb_to_ids(np.asarray(f.convert("RGB")))
        h, w = ids.shape
        pan["images"].append({"id": p.stem, "file_name": p.name, "width": w, "height": h})
        segments, instances = measure(ids, p.stem, mask_util.encode)
        pan["annotations"].append(
            {"image_id": p.stem, "file_name": f"{p.stem}.png", "segments_info": segments}
        )
        for a in instances:
            ins["annotations"].append({**a, "id": len(ins["annotations"]) + 1})
    atomic_write_json(root / f"ade20k_panoptic_{split}{suffix}.json", pan, indent=None)
    atomic_write_json(root / f"ade20k_instance_{split}{suffix}.json", ins, indent=None)


def convert_base_label(src: Path, dst: Path) -> None:
    """One official annotation PNG as the seen classes' semantic label (``training_base``)."""
    with Image.open(src) as f:
        save_label(_BASE_LUT[convert_ade20k_label(np.asarray(f), str(src))], dst)


def main(argv: list[str] | None = None) -> None:
    args = root_parser(__doc__.splitlines()[0]).parse_args(argv)
    root = require(Path(args.root) / "ADEChallengeData2016", "ADE20K folder")
    for split, dirname, suffix in (
        ("train", "training", ""),
        ("train", "training", "_base"),
        ("val", "validation", ""),
    ):
        convert_split(root, split, dirname, suffix)
    sources = list_files(root / "annotations" / "training", "*.png", "ADE20K annotations")
    out_dir = root / "annotations_detectron2" / "training_base"
    jobs = [(p, out_dir / p.name) for p in sources]
    run_jobs(jobs, convert_base_label, "ADE20K training_base semantic labels")
    ensure_label_counts(out_dir)  # FreeSeg's prompt stage reads it


if __name__ == "__main__":
    sys.exit(run_script(main))
