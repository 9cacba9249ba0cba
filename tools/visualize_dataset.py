#!/usr/bin/env python
"""Draw a registered dataset's ground truth over its images, seen and unseen classes apart.

Example:
    python tools/visualize_dataset.py --dataset voc_sem_seg_val --output vis/voc --num 8

Writes ``<output>/<image_id>.png`` per image. Classes of the dataset's zero-shot unseen
split are hatched, with a dark dashed border and " (unseen)" after their names; ignored
pixels stay undrawn. Datasets are read from ``$DETECTRON2_DATASETS`` (see datasets/README.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger

import ovseg  # noqa: F401  (registers the datasets)
from ovseg.pseudo import image_id_of
from ovseg.utils.visualization import (
    dataset_metadata,
    draw_semantic,
    overlay_scale,
    read_label,
    save_image,
)

logger = logging.getLogger("ovseg.tools.visualize_dataset")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("--num", type=int, default=10, help="how many images (default 10)")
    parser.add_argument("--start", type=int, default=0, help="index of the first image")
    parser.add_argument(
        "--min-size", type=int, default=320, help="enlarge smaller images to this short side"
    )
    return parser


def draw_ground_truth(
    dataset_dict: Mapping[str, Any], info: Mapping[str, Any], min_size: int = 0
) -> Tuple[np.ndarray, Dict[str, str]]:
    """One image with its ground truth drawn.

    Args:
        dataset_dict: {"file_name", "sem_seg_file_name", ...}.
        info: from :func:`dataset_metadata`.
        min_size (int): enlarge the drawing until its short side reaches this.

    Returns:
        tuple: (picture (h, w, 3) uint8 RGB, {class name: "seen"/"unseen"} of the classes
        present).
    """
    if "sem_seg_file_name" not in dataset_dict:
        raise ValueError(f"{dataset_dict.get('file_name')}: the dataset dict has no label file")
    image = read_image(dataset_dict["file_name"], format="RGB")
    label = read_label(dataset_dict["sem_seg_file_name"], image.shape[:2])
    names = info["metadata"].stuff_classes
    unseen = set(info["unseen"])
    present = {
        names[v]: ("unseen" if names[v] in unseen else "seen")
        for v in np.unique(label).tolist()
        if v != info["ignore_label"] and 0 <= v < len(names)
    }
    vis = draw_semantic(
        image,
        label,
        info["metadata"],
        ignore_label=info["ignore_label"],
        unseen=info["unseen"],
        scale=overlay_scale(*image.shape[:2], min_size),
    )
    return vis.get_image(), present


def run(args: argparse.Namespace) -> int:
    info = dataset_metadata(args.dataset)
    dicts = DatasetCatalog.get(args.dataset)
    if args.num < 1 or args.start < 0:
        raise ValueError(f"--num {args.num} must be >= 1 and --start {args.start} >= 0")
    chosen = dicts[args.start : args.start + args.num]
    if not chosen:
        raise ValueError(f"dataset {args.dataset!r} has {len(dicts)} images; --start is past it")
    os.makedirs(args.output, exist_ok=True)
    for d in chosen:
        picture, present = draw_ground_truth(d, info, args.min_size)
        path = os.path.join(args.output, f"{image_id_of(d)}.png")
        save_image(path, picture)
        unseen = sorted(n for n, s in present.items() if s == "unseen")
        logger.info("%s: %d classes (unseen: %s)", path, len(present), ", ".join(unseen) or "none")
    logger.info("Wrote %d pictures of %s to %s", len(chosen), args.dataset, args.output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"visualize_dataset.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    setup_logger(name="ovseg")
    sys.exit(main())
