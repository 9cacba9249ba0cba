#!/usr/bin/env python
"""Show a pseudo-label store next to the ground truth: image | ground truth | pseudo | confidence.

Example:
    python tools/visualize_pseudo_labels.py --store pseudo/voc_maskclip_vitb16 \\
        --dataset voc_sem_seg_train --output vis/pseudo --num 8

Writes ``<output>/<image_id>.png`` per image the store holds. A class keeps its colour in
both panels (matched by name); unseen classes are hatched; pixels below the store's
threshold are undrawn. The pseudo panel's title gives the pixel agreement with the ground
truth over pixels labelled in both. Drawing: ``ovseg.data.dataset_views``.

With ``--quality`` it scores an instance store (XPM's caption pseudo instances) against the
dataset's ground truth instead: per class precision, recall and how often the noun picked
the right object (``ovseg.pseudo.instance_quality``); writes ``<output>/quality.{json,md}``
and prints the table::

    python tools/visualize_pseudo_labels.py --quality \\
        --store output/demo/split_a/xpm/teacher/pseudo_instances --output vis/quality
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from detectron2.utils.logger import setup_logger

import ovseg  # noqa: F401  (registers the datasets)
from ovseg.data.dataset_views import write_pseudo_label_views
from ovseg.data.datasets.custom import add_custom_argument, register_files
from ovseg.utils.cli import positive_int, run_reporting_errors


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", required=True, help="a pseudo-label store folder")
    parser.add_argument(
        "--dataset", default="", help="the registered dataset it labels (default: its manifest's)"
    )
    parser.add_argument("--output", required=True, help="folder for the pictures")
    add_custom_argument(parser)
    parser.add_argument("--num", type=int, default=10, help="how many images (default 10)")
    parser.add_argument(
        "--panel-height", type=positive_int, default=320, help="height of each panel in pixels"
    )
    parser.add_argument(
        "--quality",
        action="store_true",
        help="score an instance store against the ground truth instead of drawing",
    )
    return parser


def _quality(args) -> None:
    from ovseg.pseudo.instance_quality import format_quality, write_store_quality

    print(format_quality(write_store_quality(args.store, args.output, dataset=args.dataset)))


def _draw(args) -> None:
    write_pseudo_label_views(
        args.store, args.output, dataset=args.dataset, num=args.num, panel_height=args.panel_height
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    work = _quality if args.quality else _draw

    def run():
        register_files(args.custom)
        work(args)

    return run_reporting_errors("visualize_pseudo_labels.py", run)


if __name__ == "__main__":
    setup_logger(name="ovseg")
    sys.exit(main())
