"""A 2-process run killed after a checkpoint and resumed ends with the uninterrupted run's
weights, also with DATALOADER.NUM_WORKERS 0 (augmentations draw from each rank's own RNG)."""

import pytest
import torch
from ovseg_testing import CONFIGS, cpu_opts, registered_ade20k
from ovseg_testing.kills import KillAfter, Killed

from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ovseg import compat
from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"


def _train(out, datasets, resume, kill_after):
    opts = cpu_opts("SemanticSegmentor", out / "cache")
    opts += ["SEED", "7", "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "0",
             "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
             "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.MAX_SIZE_TRAIN", "48",
             "INPUT.CROP.ENABLED", "False", "INPUT.SIZE_DIVISIBILITY", "48",
             "OUTPUT_DIR", str(out)]  # fmt: skip
    with registered_ade20k(datasets):
        cfg = load_config(str(CONFIG), opts)
        seed_all_rng(cfg.SEED + comm.get_rank())  # as train_net.py's default_setup
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=resume)
        if kill_after is not None:
            trainer.register_hooks([KillAfter(kill_after)])
            trainer.after_train = lambda: None
        try:
            trainer.train()
        except Killed:
            pass


def _runs(tmp, datasets):
    _train(tmp / "straight", datasets, False, None)
    _train(tmp / "killed", datasets, False, 3)  # model_0000003.pth is the last checkpoint
    _train(tmp / "killed", datasets, True, None)
    # killed between model_0000005.pth and model_final.pth: the resume writes model_final
    comm.synchronize()
    if comm.is_main_process():
        (tmp / "killed/model_final.pth").unlink()
        (tmp / "killed/last_checkpoint").write_text("model_0000005.pth")
    comm.synchronize()
    _train(tmp / "killed", datasets, True, None)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_two_process_resume_ends_with_the_uninterrupted_weights(ade20k_registered, tmp_path):
    compat.launch(_runs, 2, args=(tmp_path, ade20k_registered))
    a, b = (torch.load(tmp_path / r / "model_final.pth", weights_only=True)
            for r in ("straight", "killed"))  # fmt: skip
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the recovered model_final holds every rank's RNG states, as the uninterrupted one
    assert len(b["rng_states"]) == len(a["rng_states"]) == 2
    for x, y in zip(a["rng_states"], b["rng_states"]):
        assert torch.equal(x["torch"], y["torch"]) and x["python"] == y["python"]
