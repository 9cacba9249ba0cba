"""Convert PASCAL Context labels into the 59- and 60-class benchmarks (``pcontext*_sem_seg_*``).

Labels come, as in every reference (mmsegmentation's ``pascal_context.py``, SAN, CAT-Seg, ODISE,
ZegCLIP, MaskCLIP), from PASCAL in Detail's ``trainval_merged.json``: per image, its
``annos_segmentation`` RLE masks painted in file order (a later mask wins where two overlap)
with their category ids, the ids of ``labels.txt`` (1..459); 0 where no mask lies. This is
``detail.Detail.getMask`` re-written, so the Detail API is not needed. The splits are the json's
``phase`` (4,996 train / 5,104 val images). Without the json (or with ``--labels mat``) the
labels come from the ``trainval/<id>.mat`` LabelMaps instead (the same ids; the masks differ).

- PC-59: the 59 classes in the order of their ids (``pc59.json``; mmsegmentation's order)
  become 0..58, everything else 255 (ignore). ``annotations_detectron2/pc59_{train,val}``.
- PC-60 (MaskCLIP+'s zero-shot Context, mmsegmentation's ``PascalContextDataset``):
  0 = background (every pixel of no 59-class), 1..59 = the 59 classes (``pc60.json``).
  ``annotations_detectron2/pc60_{train,val}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.io
from prepare_utils import (
    README,
    check_values,
    make_lut,
    read_id_list,
    require,
    rle_decode,
    root_parser,
    run_jobs,
    run_script,
    save_label,
)

# labels.txt id (1..459) of contiguous class 0..58: aeroplane=2, bag=9, ..., wood=458
PCONTEXT59_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98,
    104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295,
    296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440,
    445, 454, 458,
)  # fmt: skip
DETAIL_JSON = "trainval_merged.json"
SPLITS = ("train", "val")
SOURCE_FILE = "pcontext_label_source.txt"  # json or mat: where the labels there came from
_LUT59 = make_lut(PCONTEXT59_IDS, 460, 255, np.uint8)
_LUT60 = make_lut((0, *PCONTEXT59_IDS), 460, 0, np.uint8)
_VALID = np.ones(460, dtype=bool)


def load_label_map(path: Path) -> np.ndarray:
    """Read the ``LabelMap`` (H, W) of an official PASCAL Context ``.mat`` file."""
    mat = scipy.io.loadmat(str(path))
    if "LabelMap" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise KeyError(f"{path} has no 'LabelMap' (keys: {keys}); is it a PASCAL Context file?")
    return np.asarray(mat["LabelMap"])


def convert_pcontext_label(label: np.ndarray, source: str = "label") -> np.ndarray:
    """Map a label map (H, W) with 0..459 to PC-59: (H, W) uint8 0..58, 255 = ignore."""
    check_values(label, _VALID, source)
    return _LUT59[label]


def convert_pcontext60_label(label: np.ndarray, source: str = "label") -> np.ndarray:
    """Map a label map (H, W) with 0..459 to PC-60: (H, W) uint8 0 = background, 1..59."""
    check_values(label, _VALID, source)
    return _LUT60[label]


class DetailSegmentation:
    """The semantic masks of PASCAL in Detail's ``trainval_merged.json``.

    Keeps, of the json, the images (``image_id``, ``file_name``, ``phase``, ``height``,
    ``width``) and their ``annos_segmentation`` (``image_id``, ``category_id``,
    ``segmentation`` as COCO RLE), in file order.
    """

    def __init__(self, data: dict, source: str):
        self.source = source
        for key in ("images", "annos_segmentation"):
            if key not in data:
                raise KeyError(
                    f"{source} has no {key!r} (keys: {sorted(data)}); is it PASCAL in "
                    f"Detail's {DETAIL_JSON}? See {README}."
                )
        self.images = {Path(img["file_name"]).stem: img for img in data["images"]}
        self.annotations: dict[int, list[dict]] = defaultdict(list)
        for ann in data["annos_segmentation"]:
            self.annotations[ann["image_id"]].append(ann)

    @classmethod
    def load(cls, path: Path) -> DetailSegmentation:
        """Read the json (about a minute for the real file)."""
        print(f"loading {path} ...")
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f), str(path))

    def ids(self, phase: str) -> list[str]:
        """Sorted image ids (file stems) of a phase (``train``, ``val``)."""
        return sorted(stem for stem, img in self.images.items() if img.get("phase") == phase)

    def label_map(self, image_id: str) -> np.ndarray:
        """(H, W) uint16 class ids (``labels.txt``, 1..459) of an image, 0 where unlabelled."""
        if image_id not in self.images:
            raise KeyError(f"{self.source} has no image {image_id!r}")
        image = self.images[image_id]
        shape = (int(image["height"]), int(image["width"]))
        label = np.zeros(shape, dtype=np.uint16)
        for ann in self.annotations.get(image["image_id"], ()):
            where = f"{self.source}: annotation {ann.get('id')} of {image_id}"
            mask = rle_decode(ann["segmentation"], where)
            if mask.shape != shape:
                raise ValueError(f"{where}: mask {mask.shape} but the image is {shape}")
            category = int(ann["category_id"])
            if not 1 <= category <= 459:
                raise ValueError(f"{where}: category_id {category} is not a labels.txt id")
            label[mask] = category
        return label


def _compare_with_lists(root: Path, detail: DetailSegmentation) -> None:
    """Print which images VOC 2010's own lists have and the json's phases do not."""
    for split in SPLITS:
        path = root / "ImageSets" / "Main" / f"{split}.txt"
        if not path.is_file():
            continue
        listed, phase = set(read_id_list(path)), set(detail.ids(split))
        for what, ids in (("only in", listed - phase), ("not in", phase - listed)):
            if ids:
                print(f"{split}: {len(ids)} images {what} {path}: {sorted(ids)[:10]}")


def _writer(label_source, source_name: str):
    """``convert(source, (pc59 path, pc60 path))`` for :func:`run_jobs`."""

    def convert(src, dst: tuple[Path, Path]) -> None:
        label = label_source(src)
        where = f"{source_name}:{src}" if isinstance(src, str) else str(src)
        save_label(convert_pcontext_label(label, where), dst[0])
        save_label(convert_pcontext60_label(label, where), dst[1])

    return convert


def check_label_source(out: Path, labels: str, overwrite: bool) -> None:
    """Refuse to mix labels converted from the json and from the ``.mat`` files.

    ``out/SOURCE_FILE`` names the source of the labels there; folders without it were written
    by an earlier ovseg, from the ``.mat`` files. Skipping files already converted would
    otherwise keep those labels after the json arrived. ``overwrite`` deletes them first.
    """
    marker = out / SOURCE_FILE
    folders = [out / f"pc{n}_{s}" for n in (59, 60) for s in SPLITS]
    if overwrite:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    if marker.is_file():
        previous = marker.read_text().strip()
    elif any(f.is_dir() and any(f.iterdir()) for f in folders):
        previous = "mat"
    else:
        previous = labels
    if previous != labels and not overwrite:
        raise RuntimeError(
            f"the PASCAL Context labels in {out} were converted from the {previous} source, "
            f"this run reads the {labels} one. Pass --overwrite to delete them and convert "
            f"again; see {README}."
        )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(labels + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = root_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--labels",
        choices=("auto", "json", "mat"),
        default="auto",
        help=f"label source: Detail's {DETAIL_JSON} (json), the trainval/*.mat LabelMaps (mat); "
        "auto = json if present",
    )
    parser.add_argument(
        "--json", default=None, help=f"path of {DETAIL_JSON} (default: VOC2010/{DETAIL_JSON})"
    )
    parser.add_argument(
        "--split-dir",
        default=None,
        help="folder under VOC2010 with train.txt / val.txt; default: the json's phases "
        "(4,996 / 5,104) when the json is present, else ImageSets/Main (4,998 / 5,105)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the PC-59/60 labels converted before and convert them all again",
    )
    return parser.parse_args(argv)


def split_ids(root: Path, split_dir: str | None, detail: DetailSegmentation | None) -> dict:
    """Image ids per split: the json's phases, else the lists in ``split_dir``."""
    if split_dir is None and detail is not None:
        _compare_with_lists(root, detail)
        return {split: detail.ids(split) for split in SPLITS}
    folder = root / (split_dir or "ImageSets/Main")
    return {split: read_id_list(folder / f"{split}.txt") for split in SPLITS}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = require(Path(args.root) / "VOCdevkit" / "VOC2010", "VOC 2010 folder")
    require(root / "JPEGImages", "VOC 2010 images")
    json_path = Path(args.json) if args.json else root / DETAIL_JSON
    labels = args.labels
    if labels == "auto":
        labels = "json" if json_path.is_file() else "mat"
    detail = None
    if labels == "json" or (args.split_dir is None and json_path.is_file()):
        detail = DetailSegmentation.load(require(json_path, f"PASCAL in Detail {DETAIL_JSON}"))
    if labels == "json":
        convert = _writer(detail.label_map, str(json_path))
    else:
        print(f"PASCAL Context labels from trainval/*.mat, not {DETAIL_JSON} as every reference")
        mat_dir = require(root / "trainval", "PASCAL Context labels (trainval.tar.gz)")
        convert = _writer(load_label_map, "")
    sources = {}
    for split, ids in split_ids(root, args.split_dir, detail).items():
        if labels == "json":
            missing = [i for i in ids if i not in detail.images]
            if missing:
                raise KeyError(f"{json_path} has no image {missing[0]!r} ({split} list)")
            sources[split] = {i: i for i in ids}
        else:
            what = "PASCAL Context label of"
            sources[split] = {i: require(mat_dir / f"{i}.mat", f"{what} {i}") for i in ids}
    out = root / "annotations_detectron2"
    check_label_source(out, labels, args.overwrite)
    for split, by_id in sources.items():
        jobs = [
            (src, (out / f"pc59_{split}" / f"{i}.png", out / f"pc60_{split}" / f"{i}.png"))
            for i, src in by_id.items()
        ]
        run_jobs(jobs, convert, f"PASCAL Context-59/60 {split}")


if __name__ == "__main__":
    sys.exit(run_script(main))
