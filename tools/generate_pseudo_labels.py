#!/usr/bin/env python
"""Label a dataset once with a teacher (e.g. training-free MaskCLIP) into a pseudo-label store.

Examples:
    python tools/generate_pseudo_labels.py \\
        --config-file configs/voc/maskclip/maskclip_vitb16_bs1.yaml \\
        --dataset voc_sem_seg_train --output pseudo/voc_maskclip_vitb16 --threshold 0.5
    python tools/generate_pseudo_labels.py --config-file CONFIG --output DIR --num-gpus 8 \\
        MODEL.OVSEG.TEST_VOCABULARY voc20

Every process labels every world_size-th image (by image id); images already in the store
are skipped, so re-running the same command after a kill finishes the job. The store then
feeds training through DATASETS.PSEUDO_LABELS. An XPM config (MODEL.META_ARCHITECTURE XPM,
XPMTeacher, XPMStudent) writes its caption pseudo instances into an instance store instead
(docs/xpm_pseudo_labels.md). Without CUDA, --num-gpus N starts N CPU
processes connected through gloo. The job itself is ``ovseg.engine.pseudo_labelling``.
"""

import sys

from ovseg.compat import launch
from ovseg.engine.pseudo_labelling import check_arguments, parse_args
from ovseg.engine.pseudo_labelling import main as label
from ovseg.utils.cli import run_reporting_errors


def run(args) -> None:
    check_arguments(args)  # before any process starts: a child's error ends in a traceback
    where = dict(num_machines=args.num_machines, machine_rank=args.machine_rank)
    launch(label, args.num_gpus, dist_url=args.dist_url, args=(args,), **where)


def main(argv=None) -> int:
    """The command: its exit status (2 with one error line for a user's mistake)."""
    args = parse_args(argv)
    print("Command Line Args:", args)
    return run_reporting_errors("generate_pseudo_labels.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
