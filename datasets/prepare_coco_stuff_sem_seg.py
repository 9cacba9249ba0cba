"""Convert COCO-Stuff 164k ``stuffthingmaps`` into 171 classes for ``coco_2017_*_stuff_sem_seg``.

The official maps hold ``COCO category id - 1`` (0..181; 0 = person, 181 = wood) and 255 for
unlabelled pixels. 11 of the 182 ids name no class (COCO's unused thing ids), so the 171
classes are renumbered 0..170 in id order (the order of ``coco171.json``), as in Mask2Former /
SAN / CAT-Seg; the unused ids and 255 become 255 (ignore). Reads
``coco/stuffthingmaps/{train2017,val2017}/*.png``, writes ``coco/stuffthingmaps_detectron2/``.
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

# stuffthingmaps values (COCO id - 1) that belong to no COCO-Stuff class
UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_IDS = tuple(i for i in range(182) if i not in UNUSED_IDS)
assert len(COCO_STUFF_IDS) == 171
_LUT = make_lut(COCO_STUFF_IDS, 256, 255, np.uint8)
_VALID = np.zeros(256, dtype=bool)
_VALID[:182] = True
_VALID[255] = True


def convert_coco_stuff_label(label: np.ndarray, source: str = "label") -> np.ndarray:
    """Map a stuffthingmaps label (H, W) uint8 (0..181, 255) to 0..170 / 255 (ignore)."""
    check_values(label, _VALID, source)
    return _LUT[label]


def convert_file(src: Path, dst: Path) -> None:
    """Convert one stuffthingmaps PNG into ``dst``."""
    save_label(convert_coco_stuff_label(np.asarray(Image.open(src)), str(src)), dst)


def main(argv: list[str] | None = None) -> None:
    args = root_parser(__doc__.splitlines()[0]).parse_args(argv)
    root = require(Path(args.root) / "coco", "COCO folder")
    for split in ("train2017", "val2017"):
        require(root / split, "COCO images")
        sources = list_files(root / "stuffthingmaps" / split, "*.png", "COCO-Stuff stuffthingmaps")
        out_dir = root / "stuffthingmaps_detectron2" / split
        run_jobs([(p, out_dir / p.name) for p in sources], convert_file, f"COCO-Stuff {split}")


if __name__ == "__main__":
    sys.exit(run_script(main))
