#!/usr/bin/env python
"""Train and evaluate every ovseg method (detectron2's train_net.py shape).

Config overrides (KEY VALUE pairs) come last, after the options (or after --opts).

Examples:
    python train_net.py --config-file configs/toy/lseg_toyrn_400_bs8.yaml
    python train_net.py --config-file configs/voc/maskclip/maskclip_vitb16_bs1.yaml --eval-only
    python train_net.py --config-file configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml \\
        --num-gpus 8 SOLVER.IMS_PER_BATCH 16
Without CUDA, --num-gpus N starts N CPU processes connected through gloo.
"""

import logging
import sys

# isort: off
# ovseg first: it registers datasets, mappers and models, and imports detectron2 without the
# torch.jit deprecation warnings of fvcore's import (ovseg/__init__.py)
import ovseg  # noqa: F401

# isort: on
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from ovseg.compat import default_dist_url, launch
from ovseg.data.bad_files import naming_data_files
from ovseg.data.image_io import DataFileError
from ovseg.engine import AtomicCheckpointer, Trainer, setup
from ovseg.engine.checkpoint import CheckpointReadError
from ovseg.engine.checkpoint_fit import CheckpointMismatchError
from ovseg.engine.checks import (
    check_config,
    check_run_files,
    check_run_target,
    give_back_run_folder,
    hold_run_folder,
)
from ovseg.engine.defaults import load_config
from ovseg.engine.eval_results import eval_only_evaluators, mark_results_done
from ovseg.utils.cli import parse_trailing_opts, run_reporting_errors
from ovseg.utils.downloads import WeightsDownloadError
from ovseg.utils.io import DiskFullError
from ovseg.utils.resources import OutOfResourcesError, naming_resources
from ovseg.utils.safe_load import UnsafeWeightsError


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # every weight must come from the checkpoint: a misfit is an error, not mIoU 0
        loader = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR, complete=True, cfg=cfg)
        loader.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        # into a folder holding no earlier evaluation's results (a run's own is kept)
        evaluators, folder = eval_only_evaluators(Trainer, cfg, loader.loaded_path or "")
        # out of memory: what to lower; a test image that cannot be read: its dataset, what to do
        with naming_data_files(cfg.DATASETS.TEST), naming_resources(cfg, "evaluation", model=model):
            res = Trainer.test(cfg, model, evaluators)
        mark_results_done(folder, cfg, loader.loaded_path or "")
        if comm.is_main_process():
            verify_results(cfg, res)
            logging.getLogger("ovseg").info(f"--eval-only: results saved in {folder}")
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    parser = default_argument_parser(epilog=__doc__)  # ovseg's examples, not detectron2's
    args = parse_trailing_opts(parser)  # the overrides, or "--opts" and them as in demo.py
    # a free port unless --dist-url is given: two runs of one user at once both start
    args.dist_url = default_dist_url(
        args.dist_url, parser.get_default("dist_url"), args.num_machines
    )
    print("Command Line Args:", args)

    # a config mistake (a misspelt key or dataset, a missing file, data or weights not on
    # disk) ends here in one line, exit 2, not in a traceback from every process
    def check():
        cfg = load_config(args.config_file, args.opts)
        check_config(cfg)
        given = "MODEL.WEIGHTS" in [str(o) for o in args.opts[::2]]
        held = not args.eval_only and args.machine_rank == 0  # one training per OUTPUT_DIR
        if held:
            hold_run_folder(cfg.OUTPUT_DIR)
        try:
            check_run_target(cfg, args.eval_only, args.resume, weights_given=given)
            check_run_files(cfg, eval_only=args.eval_only, resume=args.resume)
        except BaseException:
            if held:  # a refused run leaves no OUTPUT_DIR behind
                give_back_run_folder(cfg.OUTPUT_DIR)
            raise

    status = run_reporting_errors("train_net.py", check)
    if status:
        sys.exit(status)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    # a CLIP tag offline (what to download), a weight file that is unreadable, unsafe or of
    # another model, a full disk (the file, the space it needs, the checkpoint kept): one
    # line, as the checks above (raised here from any process of the run: compat.launch);
    # out of memory (the settings to lower, the checkpoint kept) and a dataset's file that
    # cannot be used (the file, its dataset, what to do; Trainer.train and main name them) too
    except (WeightsDownloadError, CheckpointMismatchError, CheckpointReadError,
            UnsafeWeightsError, DiskFullError, OutOfResourcesError,
            DataFileError) as e:  # fmt: skip
        print(f"train_net.py: error: {e}", file=sys.stderr)
        sys.exit(2)
