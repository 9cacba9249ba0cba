"""Check an unpacked FSS-1000 against HSNet's split before training or testing on it.

FSS-1000 needs no conversion: ``fss1000_{train,val,test}`` read ``<root>/FSS-1000/<class>/
<n>.jpg`` and ``<n>.png`` as HSNet's download lays them out. This script reads every class
folder the split names (``ovseg/data/vocabularies/fss1000.json``) once and reports, all at
once, what loading the splits would stop at one by one: missing class folders and images
without a mask (an error, exit 2). Masks of another size than their image are listed but
allowed: HSNet resizes both to the 480 square on its own, and so does ovseg. Writes nothing.

    python datasets/prepare_fss1000.py [--root $DETECTRON2_DATASETS]
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image
from prepare_utils import README, require, root_parser, run_script
from tqdm import tqdm

from ovseg.data.datasets.fss1000 import FSS_FOLDER, FSS_SPLITS, class_images
from ovseg.vocab import Vocabulary

SHOWN = 5  # names per problem in the error line


def _size(path: str) -> tuple:
    with Image.open(path) as image:  # the header only: no decoding
        return image.size


def check(root: Path) -> dict:
    """Read the layout of every split's class folders.

    Returns:
        dict: "images" {split: number of images}, "missing_classes" [class names],
        "unpaired" [images without a mask], "size_mismatch" [(image, image WxH, mask WxH)].
    """
    base = require(root / FSS_FOLDER, "FSS-1000 folder")
    names = Vocabulary.builtin("fss1000").names
    report = {"images": {}, "missing_classes": [], "unpaired": [], "size_mismatch": []}
    for split, (start, end) in FSS_SPLITS.items():
        count = 0
        for name in tqdm(names[start:end], desc=f"FSS-1000 {split}", unit="class"):
            folder = base / name
            if not folder.is_dir():
                report["missing_classes"].append(name)
                continue
            for image, mask in class_images(str(folder)):
                count += 1
                if not Path(mask).is_file():
                    report["unpaired"].append(image)
                    continue
                sizes = _size(image), _size(mask)
                if sizes[0] != sizes[1]:
                    report["size_mismatch"].append((image, *sizes))
        report["images"][split] = count
    return report


def _names(items: list) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(str(i) for i in items[:SHOWN]) + more


def main(argv: list[str] | None = None) -> None:
    args = root_parser(__doc__.splitlines()[0]).parse_args(argv)
    report = check(Path(args.root))
    counts = ", ".join(f"{split} {n}" for split, n in report["images"].items())
    print(f"FSS-1000 images: {counts} (HSNet's release: train 5200, val 2400, test 2400)")
    for image, size, mask in report["size_mismatch"]:
        print(f"note: {image} is {size[0]}x{size[1]}, its mask {mask[0]}x{mask[1]} (both resized)")
    problems = []
    if report["missing_classes"]:
        missing = report["missing_classes"]
        problems.append(f"{len(missing)} class folders missing ({_names(missing)})")
    if report["unpaired"]:
        unpaired = report["unpaired"]
        problems.append(f"{len(unpaired)} images without a mask ({_names(unpaired)})")
    if problems:
        raise FileNotFoundError(
            f"{Path(args.root) / FSS_FOLDER}: " + "; ".join(problems) + f". Re-extract "
            f"FSS-1000 as drawn in {README}"
        )


if __name__ == "__main__":
    sys.exit(run_script(main))
