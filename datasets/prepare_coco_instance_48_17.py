"""Write OVR-CNN's COCO 48/17 zero-shot instance split (XPM's benchmark).

Follows ``ipynb/001.ipynb`` (``filter_annotation``) of alirezazareian/ovr-cnn: the training
json keeps the 48 seen classes, their annotations (crowd included) and the images with at
least one; the val json the same for the 48 + 17 classes. The other 15 COCO classes are
dropped. Output names are the ones of OVR-CNN's ``paths_catalog.py``:
``coco/zero-shot/instances_train2017_seen_2.json`` and ``instances_val2017_all_2.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prepare_utils import require, root_parser, run_script

from ovseg.data.datasets.categories import COCO_48_17_SEEN, COCO_48_17_UNSEEN
from ovseg.utils.io import atomic_write_json

OUTPUTS = {  # split: (output name, class names kept)
    "train2017": ("instances_train2017_seen_2.json", COCO_48_17_SEEN),
    "val2017": ("instances_val2017_all_2.json", COCO_48_17_SEEN + COCO_48_17_UNSEEN),
}


def filter_annotations(data: dict, names) -> dict:
    """The json restricted to the classes ``names`` and the images holding one of them."""
    categories = [c for c in data["categories"] if c["name"] in set(names)]
    if len(categories) != len(names):
        missing = set(names) - {c["name"] for c in categories}
        raise ValueError(f"COCO instance json lacks the classes {sorted(missing)}")
    kept = {c["id"] for c in categories}
    annotations = [a for a in data["annotations"] if a["category_id"] in kept]
    images_kept = {a["image_id"] for a in annotations}
    images = [im for im in data["images"] if im["id"] in images_kept]
    return {**data, "categories": categories, "annotations": annotations, "images": images}


def main(argv: list[str] | None = None) -> None:
    args = root_parser(__doc__.splitlines()[0]).parse_args(argv)
    root = require(Path(args.root) / "coco", "COCO folder")
    for split, (name, names) in OUTPUTS.items():
        src = require(root / "annotations" / f"instances_{split}.json", "COCO instance json")
        dst = root / "zero-shot" / name
        if dst.exists():
            print(f"{dst}: already there")
            continue
        with open(src) as f:
            out = filter_annotations(json.load(f), names)
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(dst, out, indent=None)
        print(f"{dst}: {len(out['images'])} images, {len(out['annotations'])} annotations")


if __name__ == "__main__":
    sys.exit(run_script(main))
