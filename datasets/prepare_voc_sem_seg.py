"""Convert PASCAL VOC 2012 labels into 20-class labels (no background) for ``voc_sem_seg_*``.

Official labels: 0 = background, 1..20 = classes, 255 = object boundary. For VOC-20 the
background and boundary become 255 (ignore) and classes 0..19. As in SAN / CAT-Seg, an image
with no labelled pixel left (background only) gets no label file, so it is in no split.
Reads ``SegmentationClassAug`` if present (else ``SegmentationClass``) and the lists
``ImageSets/Segmentation/{train,val}.txt``; writes ``annotations_detectron2/{train,val}/*.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from prepare_utils import (
    check_values,
    make_lut,
    read_id_list,
    require,
    root_parser,
    run_jobs,
    save_label,
)

_LUT = make_lut(range(1, 21), 256, 255, np.uint8)
_VALID = np.zeros(256, dtype=bool)
_VALID[:21] = True
_VALID[255] = True


def convert_voc_label(label: np.ndarray, source: str = "label") -> np.ndarray:
    """Map a VOC label (H, W) uint8 (0 background, 1..20, 255 boundary) to 0..19 / 255."""
    check_values(label, _VALID, source)
    return _LUT[label]


def convert_file(src: Path, dst: Path) -> bool:
    """Convert one VOC label PNG (palette or grey) into ``dst``; False if nothing is labelled."""
    label = convert_voc_label(np.asarray(Image.open(src)), str(src))
    if (label == 255).all():
        return False
    save_label(label, dst)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = root_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--labels",
        choices=("auto", "SegmentationClass", "SegmentationClassAug"),
        default="auto",
        help="label folder; auto = SegmentationClassAug if present, else SegmentationClass",
    )
    parser.add_argument(
        "--train-list",
        default="train",
        help="train list under ImageSets/Segmentation (e.g. 'trainaug' for the 10,582 SBD set)",
    )
    args = parser.parse_args(argv)
    root = require(Path(args.root) / "VOCdevkit" / "VOC2012", "VOC 2012 folder")
    require(root / "JPEGImages", "VOC 2012 images")
    labels = args.labels
    if labels == "auto":
        labels = "SegmentationClassAug"
        if not (root / labels).is_dir():
            labels = "SegmentationClass"
    label_dir = require(root / labels, "VOC 2012 labels")
    for split, list_name in (("train", args.train_list), ("val", "val")):
        ids = read_id_list(root / "ImageSets" / "Segmentation" / f"{list_name}.txt")
        out_dir = root / "annotations_detectron2" / split
        jobs = []
        for image_id in ids:
            what = f"label of {image_id} (listed in {list_name}.txt)"
            src = require(label_dir / f"{image_id}.png", what)
            jobs.append((src, out_dir / f"{image_id}.png"))
        run_jobs(jobs, convert_file, f"VOC-20 {split}")


if __name__ == "__main__":
    main()
