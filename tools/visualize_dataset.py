#!/usr/bin/env python
"""Draw a registered dataset's ground truth over its images, seen and unseen classes apart.

Example:
    python tools/visualize_dataset.py --dataset voc_sem_seg_val --output vis/voc --num 8

Writes ``<output>/<image_id>.png`` per image. Classes of the dataset's zero-shot unseen
split are hatched, with a dark dashed border and " (unseen)" after their names; ignored
pixels stay undrawn. Panoptic datasets are drawn as segments and instance datasets as their
annotations (crowd regions undrawn), unseen ones hatched the same way. Datasets are read
from ``$DETECTRON2_DATASETS`` (see datasets/README.md); your own, registered by a file, with
``--custom FILE`` (docs/custom_dataset.md).
Drawing: ``ovseg.data.dataset_views``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

# isort: off
# ovseg first: it registers the datasets, and imports detectron2 without the torch.jit
# deprecation warnings of fvcore's import (ovseg/__init__.py), which --help printed
import ovseg  # noqa: F401

# isort: on
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

from ovseg.data.bad_files import naming_data_files
from ovseg.data.dataset_views import write_ground_truth_views
from ovseg.data.datasets.custom import add_custom_argument, register_files
from ovseg.engine.checks import check_data_folders
from ovseg.utils.cli import run_reporting_errors


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    add_custom_argument(parser)
    parser.add_argument("--num", type=int, default=10, help="how many images (default 10)")
    parser.add_argument("--start", type=int, default=0, help="index of the first image")
    parser.add_argument(
        "--min-size", type=int, default=320, help="enlarge smaller images to this short side"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def run():
        register_files(args.custom)
        if args.dataset in DatasetCatalog.list():  # its folders on disk, else how to get them
            check_data_folders(args.dataset, "--dataset")
        with naming_data_files([args.dataset]):  # a file it cannot read: what to do
            write_ground_truth_views(
                args.dataset, args.output, num=args.num, start=args.start, min_size=args.min_size
            )

    return run_reporting_errors("visualize_dataset.py", run)


if __name__ == "__main__":
    setup_logger(name="ovseg")
    sys.exit(main())
