"""Convert ADE20K-150 (``ADEChallengeData2016``) labels for ``ade20k_sem_seg_{train,val}``.

Official labels hold 0 = "other" and 1..150 = classes; ours hold 255 = ignore and 0..149.
Writes ``ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from prepare_utils import (
    check_values,
    list_files,
    make_lut,
    require,
    root_parser,
    run_jobs,
    run_script,
    save_label,
)

NUM_CLASSES = 150
_LUT = make_lut(range(1, NUM_CLASSES + 1), NUM_CLASSES + 1, 255, np.uint8)
_VALID = np.ones(NUM_CLASSES + 1, dtype=bool)


def convert_ade20k_label(label: np.ndarray, source: str = "label") -> np.ndarray:
    """Map official ADE20K-150 values to training ids.

    Args:
        label (np.ndarray): (H, W) uint8, 0 = other, 1..150 = classes.
        source (str): file name for error messages.

    Returns:
        np.ndarray: (H, W) uint8, 0..149 classes, 255 ignore.
    """
    check_values(label, _VALID, source)
    return _LUT[label]


def convert_file(src: Path, dst: Path) -> None:
    """Convert one official annotation PNG into ``dst``."""
    save_label(convert_ade20k_label(np.asarray(Image.open(src)), str(src)), dst)


def main(argv: list[str] | None = None) -> None:
    args = root_parser(__doc__.splitlines()[0]).parse_args(argv)
    root = require(Path(args.root) / "ADEChallengeData2016", "ADE20K-150 folder")
    for split in ("training", "validation"):
        require(root / "images" / split, "ADE20K-150 images")
        sources = list_files(root / "annotations" / split, "*.png", "ADE20K-150 annotations")
        out_dir = root / "annotations_detectron2" / split
        jobs = [(p, out_dir / p.name) for p in sources]
        run_jobs(jobs, convert_file, f"ADE20K-150 {split}")


if __name__ == "__main__":
    sys.exit(run_script(main))
