"""Kills at the moments test_exact_resume.py does not reach: while model_final.pth is saved,
during and right after the evaluation of a checkpoint's iteration, during the final
evaluation. The resumed run logs what the uninterrupted one logs, and ends with its weights.

A SIGKILL runs no ``finally``: the killed runs here skip ``after_train`` (detectron2's hooks
would otherwise write the pending metrics on the way out)."""

from __future__ import annotations

import json

import pytest
import torch
from ovseg_testing import CONFIGS, cpu_opts
from ovseg_testing.kills import KillAfter, Killed

from detectron2.utils.env import seed_all_rng

from ovseg.engine import Trainer
from ovseg.engine.checkpoint import AtomicCheckpointer
from ovseg.engine.defaults import load_config
from ovseg.engine.metric_hooks import EVALUATION_RECORD

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"
MAX_ITER = 6


def _train(out, *, resume=False, kill_after=None, kill_in_eval=None, period=3, eval_period=0):
    """Train the SemFPN R-18 baseline MAX_ITER steps; returns the iterations evaluated."""
    opts = cpu_opts("SemanticSegmentor", out / "cache")
    opts += [
        "SEED", "7",
        "SOLVER.BASE_LR", "0.01",
        "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD", str(period),
        "INPUT.MIN_SIZE_TRAIN", "(48,)",
        "INPUT.MAX_SIZE_TRAIN", "48",
        "INPUT.CROP.ENABLED", "False",
        "INPUT.SIZE_DIVISIBILITY", "48",
        "TEST.EVAL_PERIOD", str(eval_period),
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    cfg = load_config(str(CONFIG), opts)
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    evaluated = []

    def test(*args, **kwargs):  # a stand-in evaluation: its result names the weights it saw
        if trainer.iter == kill_in_eval:
            raise Killed
        evaluated.append(trainer.storage.iter)
        weight = next(trainer.model.parameters()).detach().sum()
        return {"sem_seg": {"mIoU": float(weight)}}

    trainer.test = test
    if kill_after is not None or kill_in_eval is not None:
        trainer.register_hooks([KillAfter(kill_after)])
        trainer.after_train = lambda: None  # SIGKILL: no hook writes anything on the way out
    try:
        trainer.train()
    except Killed:
        pass
    return evaluated


def _logged(out, key):
    """{iteration: value} of metrics.json's records of ``key`` (later lines win)."""
    found = {}
    for line in (out / "metrics.json").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            found[record["iteration"]] = record[key]
    return found


def _model(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same_weights(a, b):
    a, b = _model(a / "model_final.pth"), _model(b / "model_final.pth")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_kill_while_saving_model_final_still_ends_with_model_final(
    ade20k_registered, tmp_path, monkeypatch
):
    # CHECKPOINT_PERIOD divides MAX_ITER: model_0000005.pth, then model_final.pth, of one
    # iteration. A kill during the second save resumed from the first with nothing left to
    # train, and no model_final.pth was ever written (exit status 0)
    _train(tmp_path / "straight")
    real_save = AtomicCheckpointer.save

    def killed_at_final(self, name, **kwargs):
        if name == "model_final":
            raise Killed  # atomic_write removes its temporary, as a restart would
        real_save(self, name, **kwargs)

    monkeypatch.setattr(AtomicCheckpointer, "save", killed_at_final)
    out = tmp_path / "killed"
    _train(out)  # the kill ends the run
    assert not (out / "model_final.pth").exists()
    assert (out / "last_checkpoint").read_text() == "model_0000005.pth"
    monkeypatch.setattr(AtomicCheckpointer, "save", real_save)

    _train(out, resume=True)
    assert (out / "model_final.pth").is_file()
    assert _same_weights(tmp_path / "straight", out)


@pytest.mark.parametrize("window", ["during", "after"])
def test_the_evaluation_of_a_checkpoint_survives_a_kill(ade20k_registered, tmp_path, window):
    # detectron2 saves, then evaluates, and writes metrics.json every 20 iterations: a run
    # killed during the evaluation of iteration 3, or before the next write, resumed at
    # iteration 4 and never logged that evaluation
    every = dict(period=2, eval_period=2)
    assert _train(tmp_path / "straight", **every) == [1, 3, 6]  # the last at MAX_ITER
    straight = _logged(tmp_path / "straight", "sem_seg/mIoU")
    out = tmp_path / "killed"
    kill = {"kill_in_eval": 3} if window == "during" else {"kill_after": 3}
    _train(out, **every, **kill)
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    evaluated_again = [3] if window == "during" else []  # recorded in last_evaluation
    assert _train(out, resume=True, **every) == [*evaluated_again, 6]
    assert _logged(out, "sem_seg/mIoU") == straight and sorted(straight) == [1, 3, 6]
    assert (out / EVALUATION_RECORD).read_text() == "3\n"  # the final one is after_train's
    assert _same_weights(tmp_path / "straight", out)  # the evaluation moved no RNG


def test_a_resumed_final_evaluation_is_logged_at_max_iter(ade20k_registered, tmp_path):
    # a kill during the final evaluation (after model_final.pth): the resumed run trains
    # nothing and evaluates again, at iteration MAX_ITER + 1 instead of MAX_ITER
    out = tmp_path / "run"
    _train(out, eval_period=MAX_ITER)
    assert max(_logged(out, "sem_seg/mIoU")) == MAX_ITER
    _train(out, resume=True, eval_period=MAX_ITER)
    assert max(_logged(out, "sem_seg/mIoU")) == MAX_ITER
