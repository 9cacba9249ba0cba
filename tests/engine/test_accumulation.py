"""SOLVER.ACCUMULATE_STEPS: one optimizer step over N loader batches of IMS_PER_BATCH / N
images, each loss divided by N, is the step of one batch of IMS_PER_BATCH for a model whose
loss is a mean over images; the logged losses are the batches' means."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from ovseg import add_ovseg_config
from ovseg.engine.train_loop import AMPTrainer, OvsegSimpleTrainer
from ovseg.engine.trainer import per_forward_batch


class _MeanSquares(nn.Module):
    """Loss: the mean over the batch's images of a per-image squared error."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 2)

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        y = torch.stack([d["y"] for d in batch])
        err = ((self.linear(x) - y) ** 2).sum(dim=1)
        return {"loss_a": err.mean(), "loss_b": 0.5 * err.mean()}


def _samples(n):
    g = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(3, generator=g), "y": torch.randn(2, generator=g)} for _ in range(n)]


def _loader(samples, batch):
    while True:
        for i in range(0, len(samples), batch):
            yield samples[i : i + batch]


def _train(cls, batch, steps, iters=3, **kwargs):
    model = _MeanSquares()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = cls(model, _loader(_samples(12), batch), optimizer, accumulate_steps=steps, **kwargs)
    with EventStorage(0) as storage:
        for it in range(iters):
            storage.iter = it
            trainer.run_step()
        losses = storage.history("loss_a").values()
    return model.linear.weight.detach().clone(), [v for v, _ in losses]


@pytest.mark.parametrize("cls, kwargs", [(OvsegSimpleTrainer, {}), (AMPTrainer, {"dtype": "bf16"})])
def test_accumulated_step_equals_the_whole_batch(cls, kwargs):
    whole, whole_losses = _train(cls, 4, 1, **kwargs)
    accumulated, accumulated_losses = _train(cls, 2, 2, **kwargs)
    quarters, _ = _train(cls, 1, 4, **kwargs)
    tol = {} if cls is OvsegSimpleTrainer else {"atol": 2e-2, "rtol": 2e-2}  # bf16 forwards
    torch.testing.assert_close(accumulated, whole, **tol)
    torch.testing.assert_close(quarters, whole, **tol)
    # the logged loss is the mean over the step's batches: the whole batch's
    torch.testing.assert_close(torch.tensor(accumulated_losses), torch.tensor(whole_losses), **tol)
    # not accumulating (4 steps of 1 image) is another training
    single, _ = _train(cls, 1, 1, iters=3, **kwargs)
    assert not torch.allclose(single, whole, atol=1e-3)


def test_the_loader_batch_is_the_step_divided_by_the_steps():
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.SOLVER.IMS_PER_BATCH = 16
    assert per_forward_batch(cfg) is cfg
    cfg.SOLVER.ACCUMULATE_STEPS = 2
    assert per_forward_batch(cfg).SOLVER.IMS_PER_BATCH == 8 and cfg.SOLVER.IMS_PER_BATCH == 16
    cfg.SOLVER.ACCUMULATE_STEPS = 3
    with pytest.raises(ValueError, match="multiple of SOLVER.ACCUMULATE_STEPS 3"):
        per_forward_batch(cfg)
    with pytest.raises(ValueError, match="ACCUMULATE_STEPS must be >= 1"):
        OvsegSimpleTrainer(_MeanSquares(), iter([]), None, accumulate_steps=0)


@pytest.mark.parametrize(
    "cls, steps, kwargs",
    [
        (OvsegSimpleTrainer, 2, {}),
        (AMPTrainer, 1, {"dtype": "bf16"}),
        (AMPTrainer, 2, {"dtype": "bf16"}),
    ],
)
def test_hooks_after_backward_run_once_per_step_with_the_gradients_in(cls, steps, kwargs):
    # detectron2 after v0.6 calls its hooks' after_backward from its own steps (gradient
    # clipping or logging hooks); ovseg's accumulating and AMP steps replace those steps
    model = _MeanSquares()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = cls(model, _loader(_samples(12), 2), optimizer, accumulate_steps=steps, **kwargs)
    seen = []
    trainer.after_backward = lambda: seen.append(model.linear.weight.grad.abs().sum().item())
    with EventStorage(0) as storage:
        for it in range(3):
            storage.iter = it
            trainer.run_step()
    assert len(seen) == 3 and all(g > 0 for g in seen)
