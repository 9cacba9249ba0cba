"""Convert COCO panoptic + COCO-Stuff maps into ovseg's COCO panoptic benchmarks.

1. ``coco/panoptic_semseg_{train,val}2017/``: 133-class semantic labels of the panoptic
   annotations, as Mask2Former's ``prepare_coco_semantic_annos_from_panoptic_annos.py`` (every
   segment, crowd included, gets its contiguous class; VOID = 255).
2. FreeSeg's 171-class "full task" data (``datasets/prepare_coco_alldata.py:225-300`` in
   bytedance/FreeSeg @7707335) and its ``_base`` variant without the 15 unseen classes:
   ``stuffthingmaps_panoptic_detectron2/{split}[_base]/`` (semantic, 0..170 or 0..155 in the
   base variant, 255 = ignore), ``panoptic_detectron2/{split}[_base]/`` (panoptic PNGs) and
   ``panoptic_detectron2/panoptic_{split}[_base].json``. Thing (and unmerged stuff) segments
   come from the panoptic PNG; every COCO-Stuff stuff class of the stuffthingmap absent from
   the image's panoptic segments becomes one segment of id ``map id * 65793`` painted over
   them. Images whose semantic label is all 255 are left out (FreeSeg writes no PNG for them
   but keeps their old json entry; here they leave the json too), and areas and boxes are
   re-measured on the written PNG (FreeSeg keeps the panoptic json's, stale where stuff was
   painted over a thing).
3. ``panoptic_detectron2/panoptic_{split}[_base]_release.json``: the json FreeSeg's README
   command actually leaves (its pool loses the new segments): COCO panoptic's own segments of
   the kept classes, no painted stuff (:func:`write_release_json`); registered as
   ``coco_2017_{split}_full_task[_base]_release_json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
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
    COCO_PANOPTIC_CATEGORIES,
    COCO_STUFF_CATEGORIES,
    COCO_UNSEEN_IDS,
)
from ovseg.utils.io import atomic_write_json

STUFF_ID_STEP = 65793  # FreeSeg's stuff segment id: the grey map value read as RGB, rgb2id
VARIANTS = {  # suffix: dataset ids kept
    "": [c["id"] for c in COCO_STUFF_CATEGORIES],
    "_base": [c["id"] for c in COCO_STUFF_CATEGORIES if c["id"] not in COCO_UNSEEN_IDS],
}


def read_panoptic(path: Path) -> np.ndarray:
    with Image.open(path) as f:
        return rgb_to_ids(np.asarray(f.convert("RGB")))


def semseg_133(pan: np.ndarray, segments: list[dict]) -> np.ndarray:
    """Mask2Former's 133-class label of one panoptic annotation."""
    contiguous = {c["id"]: i for i, c in enumerate(COCO_PANOPTIC_CATEGORIES)}
    out = np.full(pan.shape, 255, dtype=np.uint8)
    for seg in segments:
        out[pan == seg["id"]] = contiguous[seg["category_id"]]
    return out


def full_task(stuffmap, pan, segments, kept_ids):
    """FreeSeg's conversion of one image for the classes ``kept_ids`` (dataset ids).

    Returns:
        (semantic uint8 label, panoptic ids, segments_info), or None when no pixel is labelled.
    """
    sem = make_lut([i - 1 for i in kept_ids], 256, 255, np.uint8)[stuffmap]
    if (sem == 255).all():
        return None
    kept = set(kept_ids)
    out = np.zeros(pan.shape, dtype=np.uint32)
    for seg in segments:
        if seg["category_id"] in kept:
            out[pan == seg["id"]] = seg["id"]
    present = {seg["category_id"] for seg in segments}
    ids = {seg["id"] for seg in segments}
    for cat in sorted(kept):
        if cat > 91 and cat not in present:
            if (cat - 1) * STUFF_ID_STEP in ids:
                raise ValueError(f"stuff segment id {(cat - 1) * STUFF_ID_STEP} is taken")
            out[stuffmap == cat - 1] = (cat - 1) * STUFF_ID_STEP
    return sem, out, measure_segments(out, segments)


def measure_segments(out: np.ndarray, segments: list[dict]) -> list[dict]:
    """``segments_info`` of a written full-task PNG (categories from the original segments)."""
    by_id = {seg["id"]: seg for seg in segments}
    infos = []
    for seg_id in np.unique(out):
        if seg_id == 0:
            continue
        if seg_id in by_id:
            cat, crowd = by_id[seg_id]["category_id"], by_id[seg_id].get("iscrowd", 0)
        elif seg_id % STUFF_ID_STEP == 0:
            cat, crowd = int(seg_id // STUFF_ID_STEP) + 1, 0
        else:
            raise ValueError(f"segment id {seg_id} is neither a panoptic nor a stuff segment")
        infos.append(segment_info(out == seg_id, seg_id, cat, crowd))
    return infos


def convert_split(root: Path, split: str) -> None:
    ann_file = require(root / "annotations" / f"panoptic_{split}.json", "COCO panoptic json")
    with open(ann_file) as f:
        data = json.load(f)
    anns = {a["file_name"]: a for a in data["annotations"]}
    pan_dir = require(root / f"panoptic_{split}", "COCO panoptic PNGs")

    def semantic(name, dst):
        save_label(semseg_133(read_panoptic(pan_dir / name), anns[name]["segments_info"]), dst)

    out = root / f"panoptic_semseg_{split}"
    run_jobs([(n, out / n) for n in sorted(anns)], semantic, f"COCO panoptic semseg {split}")

    maps = list_files(root / "stuffthingmaps" / split, "*.png", "COCO-Stuff stuffthingmaps")
    for suffix, kept_ids in VARIANTS.items():
        sem_dir = root / "stuffthingmaps_panoptic_detectron2" / f"{split}{suffix}"
        pan_out = root / "panoptic_detectron2" / f"{split}{suffix}"

        def convert(name, dsts, kept_ids=kept_ids):
            with Image.open(root / "stuffthingmaps" / split / name) as f:
                stuffmap = np.asarray(f)
            res = full_task(
                stuffmap, read_panoptic(pan_dir / name), anns[name]["segments_info"], kept_ids
            )
            if res is not None:
                save_label(res[0], dsts[0])
                save_panoptic(res[1], dsts[1])

        jobs = [(p.name, (sem_dir / p.name, pan_out / p.name)) for p in maps if p.name in anns]
        run_jobs(jobs, convert, f"COCO full task {split}{suffix}")
        if split == "train2017" and suffix == "_base":  # FreeSeg's prompt stage reads it
            ensure_label_counts(sem_dir)
        jsons = root / "panoptic_detectron2"
        write_json(data, anns, pan_out, jsons / f"panoptic_{split}{suffix}.json", kept_ids)
        write_release_json(
            data, anns, pan_out, jsons / f"panoptic_{split}{suffix}_release.json", kept_ids
        )


def write_json(data: dict, anns: dict, pan_out: Path, dst: Path, kept_ids) -> None:
    """The variant's panoptic json, measured on its written PNGs (resumed runs included)."""
    annotations = []
    for name in tqdm(sorted(anns), desc=f"{dst.name} segments", unit="img"):
        png = pan_out / name
        if png.exists():
            segs = measure_segments(read_panoptic(png), anns[name]["segments_info"])
            annotations.append({**anns[name], "segments_info": segs})
    _write_variant_json(data, annotations, kept_ids, dst)


def write_release_json(data: dict, anns: dict, pan_out: Path, dst: Path, kept_ids) -> None:
    """The variant's json as FreeSeg's README command leaves it (``--nproc 16``: the workers'
    new segments never reach the dumped dict, ``prepare_coco_alldata.py:288-291, :403-421``):
    COCO panoptic's own segments, here cut to what the release's loader keeps (categories among
    ``kept_ids``, ``register_coco_full.py:371-372``: no ``*-merged`` stuff), for the images
    with a written PNG (the loader's intersection, ``:336-352``). The painted stuff segments
    are in the PNGs but in no json entry; areas and boxes are the panoptic json's."""
    kept = set(kept_ids)
    annotations = []
    for name in sorted(anns):
        if (pan_out / name).exists():
            segs = [s for s in anns[name]["segments_info"] if s["category_id"] in kept]
            annotations.append({**anns[name], "segments_info": segs})
    _write_variant_json(data, annotations, kept_ids, dst)


def _write_variant_json(data: dict, annotations: list, kept_ids, dst: Path) -> None:
    """A variant's json: ``annotations``, their images and the ``kept_ids`` categories."""
    kept = set(kept_ids)
    images = {a["image_id"] for a in annotations}
    out = {
        "images": [im for im in data["images"] if im["id"] in images],
        "annotations": annotations,
        "categories": [c for c in COCO_STUFF_CATEGORIES if c["id"] in kept],
    }
    atomic_write_json(dst, out, indent=None)
    print(f"{dst}: {len(annotations)} images")


def main(argv: list[str] | None = None) -> None:
    args = root_parser(__doc__.splitlines()[0]).parse_args(argv)
    root = require(Path(args.root) / "coco", "COCO folder")
    for split in ("train2017", "val2017"):
        convert_split(root, split)


if __name__ == "__main__":
    sys.exit(run_script(main))
