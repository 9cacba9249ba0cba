"""Convert PASCAL Context labels into the 59-class benchmark for ``pcontext_sem_seg_{train,val}``.

Reads the same official ``trainval/<image id>.mat`` files as the 459-class script (``LabelMap``
in the ids of ``labels.txt``). The 59 classes keep the order of their 459-class ids (the order
of ``pc59.json``, as in SAN / CAT-Seg / mmsegmentation); every other class and 0 become 255
(ignore). Writes ``VOCdevkit/VOC2010/annotations_detectron2/pc59_{train,val}/*.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prepare_pcontext_full_sem_seg import load_label_map, parse_args, split_jobs
from prepare_utils import check_values, make_lut, require, run_jobs, save_label

# labels.txt id (1..459) of contiguous class 0..58: aeroplane=2, bag=9, ..., wood=458
PCONTEXT59_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98,
    104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295,
    296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440,
    445, 454, 458,
)  # fmt: skip
_LUT = make_lut(PCONTEXT59_IDS, 460, 255, np.uint8)
_VALID = np.ones(460, dtype=bool)


def convert_pcontext_label(label: np.ndarray, source: str = "label") -> np.ndarray:
    """Map a LabelMap (H, W) with 0..459 to (H, W) uint8 0..58, 255 = ignore."""
    check_values(label, _VALID, source)
    return _LUT[label]


def convert_file(src: Path, dst: Path) -> None:
    """Convert one ``trainval/<id>.mat`` into ``dst``."""
    save_label(convert_pcontext_label(load_label_map(src), str(src)), dst)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    root = require(Path(args.root) / "VOCdevkit" / "VOC2010", "VOC 2010 folder")
    for split, jobs in split_jobs(root, args.split_dir, "pc59").items():
        run_jobs(jobs, convert_file, f"PASCAL Context-59 {split}")


if __name__ == "__main__":
    main()
