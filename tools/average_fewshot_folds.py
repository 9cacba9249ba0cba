#!/usr/bin/env python
"""Average the four folds of a PASCAL-5i / COCO-20i evaluation (the papers' "mean" column).

Example:
    python tools/average_fewshot_folds.py output/pascal5i/lseg_r101_4ep_bs40_fold{0,1,2,3}/inference

Each argument is a ``fewshot_evaluation.json`` or the folder holding it (``train_net.py
--eval-only`` writes it to ``<OUTPUT_DIR>/inference``, or ``inference_<n>`` beside an earlier
evaluation: the folder it logs). Prints the per-fold and mean mIoU and
FB-IoU as JSON and, with ``--output``, writes it. Averaging: ``ovseg.evaluation.mean_over_folds``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from ovseg.evaluation.fewshot_evaluator import load_fold_result, mean_over_folds
from ovseg.utils.cli import run_reporting_errors
from ovseg.utils.io import atomic_write_json


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", help="fewshot_evaluation.json files or folders")
    parser.add_argument("--output", default="", help="also write the summary JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def work():
        summary = mean_over_folds([load_fold_result(p) for p in args.results])
        print(json.dumps(summary, indent=1))
        if args.output:
            atomic_write_json(args.output, summary)

    return run_reporting_errors("average_fewshot_folds.py", work)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
