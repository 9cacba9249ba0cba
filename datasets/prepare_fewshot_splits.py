"""Convert HSNet's PASCAL-5i / COCO-20i fold lists into ovseg's JSON fold lists.

HSNet's image lists are data (FWB/OSLSM's selection), not a rule over the annotations, so they
are read, never re-derived. Give the ``data/splits`` folder of a checkout of
https://github.com/juhongm999/hsnet (or ``fewshot_data/data/splits`` of
https://github.com/isl-org/lang-seg, the same files); it holds ``pascal/{trn,val}/fold<k>.txt``
and ``coco/{trn,val}/fold<k>.pkl``. The ``.pkl`` files are parsed by an unpickler that loads
no object other than dicts, lists, strings and ints, so a tampered file is refused, not run.

Writes ``<root>/fewshot_splits/{pascal5i,coco20i}/{trn,val}/fold<k>.json`` (order kept: the
test episodes depend on it) and reports how many listed images are missing under ``<root>``.

    python datasets/prepare_fewshot_splits.py --hsnet-splits ~/hsnet/data/splits
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from prepare_utils import README, require, root_parser, run_script

from ovseg.data.datasets.fewshot_splits import (
    BENCHMARKS,
    NUM_FOLDS,
    read_hsnet_coco_pickle,
    read_hsnet_pascal_list,
    write_split_json,
)


def _image_path(root: Path, benchmark: str, entry: str) -> Path:
    if benchmark == "pascal5i":
        return root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{entry}.jpg"
    return root / "COCO2014" / entry


def convert(splits: Path, root: Path, benchmarks=tuple(BENCHMARKS)) -> dict:
    """Convert every fold list of ``benchmarks``; return {benchmark: (entries, missing images)}."""
    report = {}
    for benchmark in benchmarks:
        folder, _ = BENCHMARKS[benchmark]
        ext = "txt" if benchmark == "pascal5i" else "pkl"
        entries = missing = 0
        for split in ("trn", "val"):
            for fold in range(NUM_FOLDS):
                src = require(
                    splits / folder / split / f"fold{fold}.{ext}",
                    f"HSNet {folder} list",
                    "--hsnet-splits",
                )
                if benchmark == "pascal5i":
                    data = read_hsnet_pascal_list(src)
                    names = [n for n, _ in data]
                else:
                    data = read_hsnet_coco_pickle(src)
                    names = [n for lst in data.values() for n in lst]
                write_split_json(root, benchmark, split, fold, data, source=str(src))
                entries += len(names)
                missing += sum(not _image_path(root, benchmark, n).is_file() for n in set(names))
        report[benchmark] = (entries, missing)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = root_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--hsnet-splits",
        required=True,
        type=Path,
        help="HSNet's data/splits folder (holding pascal/ and coco/)",
    )
    parser.add_argument(
        "--benchmarks", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS)
    )
    args = parser.parse_args(argv)
    root = Path(args.root)
    report = convert(
        require(args.hsnet_splits, "HSNet splits folder", "--hsnet-splits"), root, args.benchmarks
    )
    for benchmark, (entries, missing) in report.items():
        print(f"{benchmark}: {entries} listed entries written under {root / 'fewshot_splits'}")
        if missing:
            print(
                f"{benchmark}: {missing} listed images are missing under {os.fspath(root)}; "
                f"see {README} ('PASCAL-5i and COCO-20i')"
            )


if __name__ == "__main__":
    sys.exit(run_script(main))
