"""--resume whose latest checkpoint changed after it was saved goes on from the newest intact
earlier one, with a warning naming both and why; the damaged file stays as it was (a save of
its name first moves it to <name>.pth.damaged); with none intact left, train_net.py ends in
one line naming them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from ovseg_testing import CONFIGS, ROOT, flip_tensor_byte, small_semfpn_opts, subprocess_env
from ovseg_testing.kills import KillAfter, Killed
from ovseg_testing.logs import records

from detectron2.utils.env import seed_all_rng

from ovseg.engine import AtomicCheckpointer, Trainer
from ovseg.engine.defaults import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread", "small_ade20k")

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"
MAX_ITER = 6


def _opts(out):
    return small_semfpn_opts(out, MAX_ITER, "SEED", "7", "SOLVER.BASE_LR", "0.01")


def _train(out, *, resume=False, kill_after=None):
    cfg = load_config(str(CONFIG), _opts(out))
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    if kill_after is not None:
        trainer.register_hooks([KillAfter(kill_after)])
    trainer.test = lambda *a, **k: {}
    try:
        trainer.train()
    except Killed:
        pass
    return trainer


def _damaged_run(out):
    """A run killed after iteration 3: model_0000001 and model_0000003 saved, one byte of
    the latter's largest weight flipped; returns the damaged file and its bytes."""
    _train(out, kill_after=3)
    latest = out / "model_0000003.pth"
    weights = torch.load(latest, weights_only=True)["model"]
    flip_tensor_byte(latest, max(weights.values(), key=lambda t: t.numel()))
    return latest, latest.read_bytes()


def test_resume_past_a_changed_checkpoint_retrains_from_the_previous(tmp_path):
    out = tmp_path / "run"
    latest, damaged = _damaged_run(out)
    # --eval-only --resume (train_net.py's loader) evaluates the previous one, and says so
    cfg = load_config(str(CONFIG), _opts(out))
    loader = AtomicCheckpointer(Trainer.build_model(cfg), str(out), complete=True, cfg=cfg)
    with records("fvcore.common.checkpoint") as said:
        loader.resume_or_load("", resume=True)
    assert loader.loaded_path == str(out / "model_0000001.pth")
    (warning,) = [r.getMessage() for r in said]
    assert f"Evaluating {out / 'model_0000001.pth'} (iteration 1) instead" in warning, warning
    # a run stopping before its next save (memory, disk) names what it keeps: not the damaged
    kept = loader.kept_checkpoint()
    assert kept.startswith(f"the run's last intact checkpoint {out / 'model_0000001.pth'}"), kept
    with records("fvcore.common.checkpoint") as said:
        resumed = _train(out, resume=True)
    assert resumed.checkpointer.loaded_path == str(out / "model_0000001.pth")
    assert resumed.start_iter == 2 and resumed.iter == MAX_ITER  # and it finished
    warning = " ".join(r.getMessage() for r in said)
    assert f"{latest}, named by {out / 'last_checkpoint'}, was refused" in warning, warning
    assert "'model' entry no longer matches" in warning
    assert f"Resuming from {out / 'model_0000001.pth'} (iteration 1)" in warning
    assert "the iterations after it are trained again" in warning
    assert "a save of the same name first moves it to <name>.pth.damaged" in warning
    # kept as it was, moved aside when iteration 3 trained again took its name
    aside = out / "model_0000003.pth.damaged"
    assert aside.read_bytes() == damaged
    assert f"{latest} was refused as damaged by --resume: moved to {aside}" in warning
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    redone = torch.load(latest, weights_only=True)
    assert redone["iteration"] == 3
    # the same weights as the first time (the RNG states resumed), but the flipped one
    first = torch.load(aside, weights_only=True)["model"]
    differ = [k for k, v in redone["model"].items() if not torch.equal(v, first[k])]
    assert len(differ) == 1 and first[differ[0]].numel() == max(v.numel() for v in first.values())
    # a later --resume continues from the last save, the damaged file left out of it
    assert _train(out, resume=True).start_iter == MAX_ITER


def test_train_net_with_no_intact_checkpoint_left_says_so_in_one_line(tmp_path, small_ade20k):
    out = tmp_path / "run"
    latest, damaged = _damaged_run(out)
    earlier = out / "model_0000001.pth"
    earlier.write_bytes(earlier.read_bytes()[:1000])  # truncated
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", str(CONFIG), "--resume", *_opts(out)],
        cwd=ROOT,
        env=subprocess_env(small_ade20k),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("train_net.py: error: --resume found no intact checkpoint"), error
    assert f"{latest}: its 'model' entry no longer matches" in error, error
    assert f"{earlier}: it cannot be read (truncated or damaged?)" in error, error
    assert "without --resume into a new OUTPUT_DIR" in error and "MODEL.WEIGHTS" in error
    # nothing removed, replaced or renamed
    assert latest.read_bytes() == damaged and len(earlier.read_bytes()) == 1000
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    assert sorted(p.name for p in out.glob("*.pth")) == [earlier.name, latest.name]
