#!/usr/bin/env python
"""Plot training curves from a run's metrics.json (detectron2's JSONWriter) to a PNG.

Example:
    python tools/plot_metrics.py output/maskclip_plus_voc            # -> .../metrics.png
    python tools/plot_metrics.py output/run/metrics.json --output curves.png

Panels: the losses (``total_loss`` and every ``loss*`` key), the learning rate, and, when
the run evaluated, mIoU / mIoU-seen / mIoU-unseen / hIoU per test dataset (the evaluator's
``sem_seg`` results as detectron2 flattens them: ``sem_seg/mIoU``, or
``<dataset>/sem_seg/mIoU`` with several test datasets). A resumed run appends iterations it
had already logged; the later lines win. Plotting: ``ovseg.utils.training_curves``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ovseg.utils.cli import run_reporting_errors
from ovseg.utils.training_curves import plot_metrics


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", help="a run's OUTPUT_DIR or its metrics.json")
    parser.add_argument(
        "--output", default="", help="the picture, .png or .jpg (default: metrics.png beside it)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    return run_reporting_errors("plot_metrics.py", lambda: plot_metrics(args.path, args.output))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
