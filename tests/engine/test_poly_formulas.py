"""SOLVER.POLY_FORMULA and SOLVER.POLY_STEP_ITERS against the official schedules written out
(tests/ovseg_testing/official_lr.py), and the default unchanged."""

import pytest
import torch
from ovseg_testing.official_lr import (
    lightning_epoch_poly_lr,
    lightning_steps_per_epoch,
    mmcv_poly_lr,
)
from torch import nn

from detectron2.config import get_cfg
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler

from ovseg import add_ovseg_config
from ovseg.engine.solver import PolyParamScheduler, build_lr_scheduler, build_optimizer


class TwoGroups(nn.Module):
    """Two parameter groups of different lr (backbone x0.1), as mmcv sees them."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 2, bias=False)
        self.head = nn.Linear(2, 2, bias=False)


def _cfg(**solver):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def _lrs(cfg, iters=None):
    """Every group's lr before each iteration, as the trainer steps the scheduler."""
    opt = build_optimizer(cfg, TwoGroups())
    sched = build_lr_scheduler(cfg, opt)
    out = []
    for _ in range(iters or cfg.SOLVER.MAX_ITER):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out, [g["initial_lr"] for g in opt.param_groups]


def test_mmcv_formula_is_mmcvs_poly_with_min_lr_and_linear_warmup():
    # ZegCLIP's shape (zero-voc:73-76): min_lr = ending x lr, linear warm-up from 1e-6, here
    # 200 iterations with a 30-iteration warm-up
    cfg = _cfg(
        BASE_LR=2e-4,
        MAX_ITER=200,
        WARMUP_ITERS=30,
        WARMUP_FACTOR=1e-6,
        POLY_LR_CONSTANT_ENDING=0.005,
        POLY_FORMULA="mmcv",
    )
    lrs, bases = _lrs(cfg)
    for it in (0, 1, 15, 29, 30, 31, 100, 199):
        for lr, base in zip(lrs[it], bases):
            want = mmcv_poly_lr(it, base, 200, 0.9, 0.005 * base, 30, 1e-6)
            assert lr == pytest.approx(want, rel=1e-12, abs=0), (it, base)
    assert lrs[0][1] == pytest.approx(2e-4 * 1e-6)  # mmcv starts at ratio x the poly value
    # detectron2's warm-up differs: it ramps to the poly value at iteration 30
    ovseg, _ = _lrs(_cfg(**{**dict(cfg.SOLVER), "POLY_FORMULA": "ovseg"}))
    assert ovseg[15][1] != pytest.approx(lrs[15][1], rel=1e-3)


def test_mmcv_formula_with_a_constant_warmup():
    cfg = _cfg(
        BASE_LR=1e-2,
        MAX_ITER=50,
        WARMUP_ITERS=10,
        WARMUP_FACTOR=0.1,
        WARMUP_METHOD="constant",
        POLY_LR_CONSTANT_ENDING=0.0,
        POLY_FORMULA="mmcv",
    )
    lrs, bases = _lrs(cfg)
    for it in (0, 5, 9, 10, 11, 49):
        for lr, base in zip(lrs[it], bases):
            want = mmcv_poly_lr(it, base, 50, 0.9, 0.0, 10, 0.1, warmup="constant")
            assert lr == pytest.approx(want, rel=1e-12, abs=0), (it, base)
    assert lrs[9][1] == pytest.approx(0.1 * lrs[10][1] * ((1 - 9 / 50) / (1 - 10 / 50)) ** 0.9)


def test_mmcv_formula_without_warmup_is_maskclip_plus_schedule():
    # MaskCLIP+ (schedule_20k.py:5): SGD 0.01, poly 0.9 to min_lr 1e-4, no warm-up
    cfg = _cfg(
        BASE_LR=0.01,
        MAX_ITER=100,
        WARMUP_ITERS=0,
        POLY_LR_CONSTANT_ENDING=0.01,
        POLY_FORMULA="mmcv",
    )
    lrs, bases = _lrs(cfg)
    for it in (0, 1, 50, 98, 99):
        for lr, base in zip(lrs[it], bases):
            assert lr == pytest.approx(mmcv_poly_lr(it, base, 100, 0.9, 0.01 * base), rel=1e-12)
    # above ovseg's floored poly, by at most the floor
    ovseg, _ = _lrs(_cfg(**{**dict(cfg.SOLVER), "POLY_FORMULA": "ovseg"}))
    assert all(0 < m[1] - o[1] <= 1e-4 for m, o in zip(lrs[1:], ovseg[1:]))


def test_step_iters_is_lightnings_per_epoch_lambda_lr():
    # 6 epochs of 7 optimizer steps: the lr holds within an epoch and decays between them
    cfg = _cfg(BASE_LR=0.0025, MAX_ITER=42, WARMUP_ITERS=0, POLY_STEP_ITERS=7)
    lrs, bases = _lrs(cfg)
    for it in range(42):
        for lr, base in zip(lrs[it], bases):
            assert lr == pytest.approx(lightning_epoch_poly_lr(it, base, 7, 6), rel=1e-12)
    assert lrs[6] == lrs[0] and lrs[7][1] < lrs[6][1]


def test_lightning_steps_per_epoch_of_the_ade20k_run():
    # train.sh: 20,210 images, batch 1 per GPU, 2 accumulated, 8 GPUs (batch 16): 2,527
    # batches per GPU, the last one stepping alone
    assert lightning_steps_per_epoch(20210, 8, 1, 2) == 1264
    assert lightning_steps_per_epoch(16, 8, 1, 2) == 1


def test_default_schedule_is_unchanged():
    # the sequence the schedule gave before the switches existed, bit for bit: after the
    # warm-up base x max((1 - it / max_iter) ** 0.9, ending); during it detectron2's ramp
    cfg = _cfg(
        BASE_LR=0.01, MAX_ITER=120, WARMUP_ITERS=20, WARMUP_FACTOR=1e-3, POLY_LR_CONSTANT_ENDING=0.2
    )
    lrs, bases = _lrs(cfg)
    for it in range(20, 120):
        assert lrs[it] == [b * max((1.0 - it / 120) ** 0.9, 0.2) for b in bases]
    opt = build_optimizer(cfg, TwoGroups())
    ramp = WarmupParamScheduler(PolyParamScheduler(0.9, 0.2), 1e-3, 20 / 120, "linear")
    ref = LRMultiplier(opt, ramp, 120)
    for it in range(120):
        assert lrs[it] == [g["lr"] for g in opt.param_groups]
        opt.step()
        ref.step()


@pytest.mark.parametrize(
    "solver, match",
    [
        (dict(POLY_FORMULA="detectron2"), "POLY_FORMULA='detectron2'"),
        (dict(POLY_STEP_ITERS=7, MAX_ITER=40), "POLY_STEP_ITERS=7 with SOLVER.MAX_ITER=40"),
        (dict(POLY_FORMULA="mmcv", WARMUP_METHOD="exp"), "WARMUP_METHOD='exp'"),
    ],
)
def test_bad_settings_are_refused(solver, match):
    cfg = _cfg(**solver)
    opt = build_optimizer(cfg, TwoGroups())
    with pytest.raises(ValueError, match=match):
        build_lr_scheduler(cfg, opt)


def test_step_iters_with_the_ovseg_formula_keeps_the_floor():
    cfg = _cfg(BASE_LR=1.0, MAX_ITER=10, WARMUP_ITERS=0, POLY_STEP_ITERS=5)
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.9
    lrs, _ = _lrs(cfg)
    assert [r[1] for r in lrs] == [1.0] * 5 + [0.9] * 5  # (1 - 0.5)^0.9 = 0.536 -> floor
    assert torch.tensor(lrs).min().item() == pytest.approx(0.09)  # the backbone's 0.1 x 0.9
