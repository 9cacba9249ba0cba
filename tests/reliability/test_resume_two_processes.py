"""A 2-process run killed after a checkpoint and resumed ends with the uninterrupted run's
weights, also with DATALOADER.NUM_WORKERS 0 (augmentations draw from each rank's own RNG);
past a damaged latest checkpoint, both ranks resume from the one the main process chose."""

import shutil

import pytest
import torch
from ovseg_testing import CONFIGS, cpu_opts, flip_tensor_byte, registered_ade20k
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
    # its model_final damaged (in a copy): both ranks go on from model_0000005
    if comm.is_main_process():
        shutil.copytree(tmp / "killed", tmp / "damaged")
        final = tmp / "damaged/model_final.pth"
        flip_tensor_byte(final, torch.load(final, weights_only=True)["rng_states"][1]["torch"])
    comm.synchronize()
    _train(tmp / "damaged", datasets, True, None)


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
    # the damaged model_final is kept as found (one byte off the copy it was made from), moved
    # aside; the one saved again in its place is the uninterrupted run's
    damaged = tmp_path / "damaged"
    kept = (damaged / "model_final.pth.damaged").read_bytes()
    copied = (tmp_path / "killed/model_final.pth").read_bytes()
    assert len(kept) == len(copied) and sum(x != y for x, y in zip(kept, copied)) == 1
    c = torch.load(damaged / "model_final.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])
    assert len(c["rng_states"]) == 2
    assert all(
        torch.equal(x["torch"], y["torch"]) for x, y in zip(a["rng_states"], c["rng_states"])
    )
    assert (damaged / "last_checkpoint").read_text() == "model_final.pth"
