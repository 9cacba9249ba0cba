"""A loss that turns NaN between two read-backs of the losses (SOLVER.METRICS_PERIOD steps
apart) stops the run before the next checkpoint, naming the iteration and the losses: the run's
last checkpoint stays the finite one before it, which --resume continues from."""

from __future__ import annotations

import math

import pytest
import torch
from ovseg_testing import CONFIGS, small_semfpn_opts

from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"


@pytest.mark.usefixtures("one_torch_thread", "small_ade20k")
def test_a_nan_loss_stops_the_run_before_it_reaches_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    opts = small_semfpn_opts(out, 8, "SOLVER.METRICS_PERIOD", "20")
    trainer = Trainer(load_config(str(CONFIG), opts))
    trainer.resume_or_load(resume=False)
    trainer.test = lambda *args, **kwargs: {}
    model, forward = trainer.model, trainer.model.forward

    def nan_at_step_2(batch):  # the loss of iteration 2 (0-based) is NaN
        losses = forward(batch)
        if trainer.iter == 2:
            losses = {k: v * math.nan for k, v in losses.items()}
        return losses

    model.forward = nan_at_step_2
    with pytest.raises(FloatingPointError, match=r"(?s)iteration=2\b.*loss_sem_seg") as info:
        trainer.train()
    # model_0000003.pth would hold the weights the NaN step made
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000001.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    weights = torch.load(out / "model_0000001.pth", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert f"last checkpoint {out / 'model_0000001.pth'} is kept" in str(info.value)
