"""Convert PASCAL Context (all 459 classes) labels for ``pcontext_full_sem_seg_{train,val}``.

The official ``trainval.tar.gz`` holds one ``trainval/<image id>.mat`` per VOC 2010 train/val
image whose ``LabelMap`` gives 1..459 (the ids of ``labels.txt``; 0 = unlabelled). Ids become
0..458 (the order of ``pc459.json``) and 0 becomes 65535 (ignore), saved as 16-bit PNG, as
ODISE / SAN / CAT-Seg do. Splits are the phases of PASCAL in Detail's ``trainval_merged.json``
when it is there (4,996 / 5,104 images, as SAN's ``prepare_pcontext_sem_seg_459cls.py`` and
PC-59 here), else VOC 2010's ``ImageSets/Main/{train,val}.txt`` (4,998 / 5,105; the json's
phases lack three of those images). Writes
``VOCdevkit/VOC2010/annotations_detectron2/pc459_{train,val}/*.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from prepare_pcontext_sem_seg import DETAIL_JSON, DetailSegmentation, load_label_map, split_ids
from prepare_utils import (
    check_values,
    make_lut,
    require,
    root_parser,
    run_jobs,
    run_script,
    save_label,
)

NUM_CLASSES = 459
IGNORE = 65535
_LUT = make_lut(range(1, NUM_CLASSES + 1), NUM_CLASSES + 1, IGNORE, np.uint16)
_VALID = np.ones(NUM_CLASSES + 1, dtype=bool)


def convert_pcontext_full_label(label: np.ndarray, source: str = "label") -> np.ndarray:
    """Map a LabelMap (H, W) with 0..459 to (H, W) uint16 0..458, 65535 = ignore."""
    check_values(label, _VALID, source)
    return _LUT[label]


def convert_file(src: Path, dst: Path) -> None:
    """Convert one ``trainval/<id>.mat`` into ``dst``."""
    save_label(convert_pcontext_full_label(load_label_map(src), str(src)), dst)


def split_jobs(
    root: Path, split_ids: dict[str, list[str]], prefix: str
) -> dict[str, list[tuple[Path, Path]]]:
    """(``.mat``, output PNG) pairs per split, each ``.mat`` required to exist.

    ``split_ids``: the image ids of ``train`` and ``val``; ``prefix``: the output folders'.
    """
    require(root / "JPEGImages", "VOC 2010 images")
    mat_dir = require(root / "trainval", "PASCAL Context labels (trainval.tar.gz)")
    jobs = {}
    for split, ids in split_ids.items():
        out_dir = root / "annotations_detectron2" / f"{prefix}_{split}"
        jobs[split] = [
            (require(mat_dir / f"{i}.mat", f"PASCAL Context label of {i}"), out_dir / f"{i}.png")
            for i in ids
        ]
    return jobs


def parse_args(description: str, argv: list[str] | None):
    parser = root_parser(description)
    parser.add_argument(
        "--split-dir",
        default=None,
        help="folder under VOC2010 with train.txt / val.txt (ImageSets/SegmentationContext "
        "for mmsegmentation's lists); default: the phases of trainval_merged.json (4,996 / "
        "5,104) when present, else ImageSets/Main (4,998 / 5,105)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    root = require(Path(args.root) / "VOCdevkit" / "VOC2010", "VOC 2010 folder")
    json_path = root / DETAIL_JSON
    detail = None
    if args.split_dir is None and json_path.is_file():
        detail = DetailSegmentation.load(json_path)
    ids = split_ids(root, args.split_dir, detail)
    if detail is None and args.split_dir is None:
        print(
            f"No {DETAIL_JSON}: splits from ImageSets/Main (4,998 / 5,105), not the 5,104 "
            "validation images every reference uses"
        )
    for split, jobs in split_jobs(root, ids, "pc459").items():
        run_jobs(jobs, convert_file, f"PASCAL Context-459 {split}")


if __name__ == "__main__":
    sys.exit(run_script(main))
