"""A run interrupted and resumed with SEED set ends with the very weights of an
uninterrupted run (data position and RNG states are checkpointed); a truncated latest
checkpoint falls back to the previous one; stale checkpoint temporaries are removed; a run
stopped early still writes its pending loss metrics."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from ovseg_testing import CONFIGS, cpu_opts
from ovseg_testing.kills import KillAfter, Killed
from ovseg_testing.logs import records

from detectron2.utils.env import seed_all_rng

from ovseg.engine import Trainer
from ovseg.engine.checkpoint import CheckpointReadError
from ovseg.engine.checkpoint_digest import content_digests
from ovseg.engine.defaults import load_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"
MAX_ITER = 6


def _train(
    out, workers, *, resume=False, kill_after=None, period=MAX_ITER // 2, steps=1, amp=False
):
    opts = cpu_opts("SemanticSegmentor", out / "cache")
    if amp:  # bf16 autocast on the CPU: the AMP step's state goes into checkpoints too
        opts += ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bf16"]
    opts += [
        "SEED", "7",
        "SOLVER.ACCUMULATE_STEPS", str(steps),
        "DATALOADER.NUM_WORKERS", str(workers),
        "SOLVER.BASE_LR", "0.01",
        "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD", str(period),
        # random crops and flips: the data's augmentation draws random numbers
        "INPUT.MIN_SIZE_TRAIN", "(72, 80, 96)",
        "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.CROP.SIZE", "(48, 48)",
        "INPUT.SIZE_DIVISIBILITY", "48",
        "TEST.EVAL_PERIOD", "0",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    cfg = load_config(str(CONFIG), opts)
    seed_all_rng(cfg.SEED)  # as default_setup does in a fresh process
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    if kill_after is not None:
        trainer.register_hooks([KillAfter(kill_after)])
    trainer.test = lambda *a, **k: {}  # no final evaluation: the weights are compared
    try:
        trainer.train()
    except Killed:
        pass
    return trainer


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


# (loader workers, SOLVER.ACCUMULATE_STEPS, AMP): an accumulating run resumes after the
# loader batches of the finished iterations, steps per iteration
@pytest.mark.parametrize(
    "workers, steps, amp", [(0, 1, False), (2, 1, False), (0, 2, False), (0, 1, True)]
)
def test_resumed_run_equals_uninterrupted_run(ade20k_registered, tmp_path, workers, steps, amp):
    straight = _weights(_train(tmp_path / "straight", workers, steps=steps, amp=amp))
    _train(tmp_path / "resumed", workers, kill_after=MAX_ITER // 2 - 1, steps=steps, amp=amp)
    assert (tmp_path / "resumed/last_checkpoint").read_text() == "model_0000002.pth"
    resumed = _train(tmp_path / "resumed", workers, resume=True, steps=steps, amp=amp)
    assert type(resumed._trainer).__name__ == ("AMPTrainer" if amp else "OvsegSimpleTrainer")
    assert resumed.start_iter == MAX_ITER // 2
    weights = _weights(resumed)
    assert weights.keys() == straight.keys()
    different = [k for k in straight if not torch.equal(straight[k], weights[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_a_checkpoint_of_another_process_count_resumes_its_position_not_its_streams(
    ade20k_registered, tmp_path
):
    out = tmp_path / "run"
    _train(out, 0, kill_after=MAX_ITER // 2 - 1)
    path = out / "model_0000002.pth"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["rng_states"] = checkpoint["rng_states"] * 2  # as a 2-process run saves them
    # with the record of its contents such a run writes (an edit of a file is refused)
    checkpoint["ovseg_meta"]["content_sha256"] = content_digests(checkpoint, "ovseg_meta")
    torch.save(checkpoint, path)
    with records("ovseg.engine.resume") as said:
        resumed = _train(out, 0, resume=True)
    assert resumed.start_iter == MAX_ITER // 2 and resumed.iter == MAX_ITER
    (warning,) = [r.getMessage() for r in said]
    assert "RNG states of 2 process(es), this run has 1" in warning


def test_truncated_latest_checkpoint_falls_back_to_the_previous(
    ade20k_registered, tmp_path, caplog
):
    out = tmp_path / "run"
    _train(out, 0, kill_after=3, period=2)  # writes model_0000001 and model_0000003
    latest = out / "model_0000003.pth"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    # detectron2's setup_logger stops "fvcore" records from reaching the root logger
    checkpoint_logger = logging.getLogger("fvcore.common.checkpoint")
    checkpoint_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            resumed = _train(out, 0, resume=True)
    finally:
        checkpoint_logger.removeHandler(caplog.handler)
    assert resumed.start_iter == 2  # from model_0000001 (iteration 1)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert str(latest) in warning and "model_0000001.pth" in warning


def test_no_readable_checkpoint_to_resume_from_is_an_error_naming_them(ade20k_registered, tmp_path):
    out = tmp_path / "run"
    _train(out, 0, kill_after=3, period=2)  # writes model_0000001 and model_0000003
    for name in ("model_0000001.pth", "model_0000003.pth"):
        path = out / name
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointReadError, match="no intact checkpoint") as error:
        _train(out, 0, resume=True)
    message = str(error.value)
    # both files tried, why, and a way on that keeps them (no "remove it")
    assert str(out / "model_0000003.pth") in message and str(out / "model_0000001.pth") in message
    assert "cannot be read (truncated or damaged?)" in message and "\n" not in message
    assert "without --resume into a new OUTPUT_DIR" in message and "MODEL.WEIGHTS" in message
    assert all((out / n).stat().st_size == 100 for n in ("model_0000001.pth", "model_0000003.pth"))


def test_stale_checkpoint_temporaries_are_removed_at_start(ade20k_registered, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".tmp-0badc0demodel_0000001.pth", out / ".tmp-12345678last_checkpoint"]
    kept = [out / ".tmp-notmine.json", out / "notes.pth"]
    for path in stale + kept:
        path.write_bytes(b"x" * 10)
    _train(out, 0, kill_after=0)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_losses_of_a_run_stopped_between_read_backs_are_written(ade20k_registered, tmp_path):
    # SOLVER.METRICS_PERIOD 20 (the default) reads the losses back every 20 steps; a run
    # stopped after its fourth step had them pending, and they were lost (the step's own
    # after_train is never called by detectron2's DefaultTrainer)
    trainer = _train(tmp_path / "run", 0, kill_after=3)
    assert trainer.cfg.SOLVER.METRICS_PERIOD > 4
    assert [it for _, it in trainer.storage.history("total_loss").values()] == [0, 1, 2, 3]
    lines = (tmp_path / "run/metrics.json").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["iteration"] == 3 and "total_loss" in last
