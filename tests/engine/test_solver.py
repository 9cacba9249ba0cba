"""ovseg.engine.solver and the AMP step: parameter groups, poly schedule, clipping."""

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg

from ovseg import add_ovseg_config
from ovseg.engine.solver import (
    PolyParamScheduler,
    build_lr_scheduler,
    build_optimizer,
    get_param_groups,
)
from ovseg.engine.train_loop import AMPTrainer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.prompt = nn.Parameter(torch.zeros(2, 4))
        self.head = nn.Conv2d(4, 2, 1)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)

    def forward(self, x):
        return self.head(self.backbone(x) + self.prompt.sum())


def make_cfg(**solver):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.WEIGHT_DECAY = 0.1
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.LR_MULTIPLIER_KEYS = ["prompt"]
    cfg.SOLVER.LR_MULTIPLIER = 10.0
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def test_param_groups_rules():
    groups = {g["name"]: g for g in get_param_groups(make_cfg(), Net())}
    assert "frozen.weight" not in groups  # frozen parameters are never optimised
    assert groups["backbone.0.weight"]["lr"] == pytest.approx(0.1)
    assert groups["backbone.0.weight"]["weight_decay"] == 0.1
    assert groups["backbone.1.weight"]["weight_decay"] == 0.0  # norm
    assert groups["backbone.1.weight"]["lr"] == pytest.approx(0.1)
    assert groups["prompt"]["lr"] == pytest.approx(10.0)
    assert groups["prompt"]["weight_decay"] == 0.0  # embedding
    assert groups["head.weight"]["lr"] == 1.0 and groups["head.bias"]["weight_decay"] == 0.1


def test_bias_lr_factor_and_bias_decay():
    # the Detectron recipe XPM trains with: biases at 2x lr without decay
    # (maskrcnn_benchmark/solver/build.py:18-20, defaults.py:494, 499)
    cfg = make_cfg(BIAS_LR_FACTOR=2.0, WEIGHT_DECAY_BIAS=0.0)
    groups = {g["name"]: g for g in get_param_groups(cfg, Net())}
    assert groups["head.bias"]["lr"] == pytest.approx(2.0)
    assert groups["head.bias"]["weight_decay"] == 0.0
    assert groups["backbone.0.bias"]["lr"] == pytest.approx(0.2)  # x the backbone's 0.1
    assert groups["head.weight"]["lr"] == 1.0 and groups["head.weight"]["weight_decay"] == 0.1


def test_no_trainable_parameters_error():
    with pytest.raises(ValueError, match="no trainable parameters.*--eval-only"):
        get_param_groups(make_cfg(), nn.Linear(2, 2).requires_grad_(False))


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER='LION'"):
        build_optimizer(make_cfg(OPTIMIZER="LION"), Net())


def test_poly_schedule_with_warmup():
    cfg = make_cfg(
        LR_SCHEDULER_NAME="WarmupPolyLR",
        MAX_ITER=100,
        WARMUP_ITERS=10,
        WARMUP_FACTOR=0.0,
        POLY_LR_POWER=1.0,
        BACKBONE_MULTIPLIER=1.0,
        LR_MULTIPLIER=1.0,
    )
    model = nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.0)
    # detectron2's warm-up ramps linearly to the schedule's value at the end of warm-up:
    # halfway through 10 iterations, 0.5 * (1 - 10/100)
    assert lrs[5] == pytest.approx(0.45)
    assert lrs[10] == pytest.approx(0.9)
    assert lrs[50] == pytest.approx(0.5)  # (1 - 50/100) ** 1
    assert lrs[99] == pytest.approx(0.01)


def test_poly_constant_ending():
    s = PolyParamScheduler(power=0.9, constant_ending=0.2)
    assert s(0.0) == 1.0
    assert s(0.99) == 0.2
    assert s(0.5) == pytest.approx(0.5**0.9)


def test_full_model_clipping_clips_total_norm():
    cfg = make_cfg(OPTIMIZER="SGD", BACKBONE_MULTIPLIER=1.0, LR_MULTIPLIER=1.0, MOMENTUM=0.0)
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    a = nn.Parameter(torch.zeros(1))
    b = nn.Parameter(torch.zeros(1))
    holder = nn.Module()
    holder.a, holder.b = a, b
    opt = build_optimizer(cfg, holder)
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])  # total norm 5
    opt.step()
    # one step of lr 1 along the clipped gradient (0.6, 0.8)
    assert a.item() == pytest.approx(-0.6, abs=1e-5)
    assert b.item() == pytest.approx(-0.8, abs=1e-5)


@pytest.mark.parametrize("clip_type, expected", [("value", (-0.5, -0.5)), ("norm", (-0.3, -0.4))])
def test_per_parameter_clipping_of_detectron2(clip_type, expected):
    # detectron2's "value" clamps every gradient element to 0.5, "norm" scales each
    # parameter's gradient (3, 4) to norm 0.5
    cfg = make_cfg(OPTIMIZER="SGD", BACKBONE_MULTIPLIER=1.0, LR_MULTIPLIER=1.0, MOMENTUM=0.0)
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    holder = nn.Module()
    holder.a = nn.Parameter(torch.zeros(2))
    opt = build_optimizer(cfg, holder)
    holder.a.grad = torch.tensor([3.0, 4.0])  # norm 5
    opt.step()
    assert holder.a.tolist() == pytest.approx(list(expected), abs=1e-5)


class TinySeg(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, batch):
        x = torch.stack([b["image"] for b in batch])
        y = torch.stack([b["label"] for b in batch])
        return {"loss_ce": nn.functional.cross_entropy(self.conv(x), y)}


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 8, generator=g)
    batch = [{"image": x, "label": (x[0] > 0).long()}]
    while True:
        yield batch


def test_bf16_amp_step_on_cpu_learns():
    torch.manual_seed(0)
    model = TinySeg()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = AMPTrainer(model, _loader(), opt, dtype="bf16")
    losses = []
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        for i in range(20):
            storage.iter = i
            trainer.iter = i
            trainer.run_step()
            losses.append(storage.history("total_loss").latest())
    assert losses[-1] < 0.7 * losses[0]
    assert "grad_scaler" in trainer.state_dict()


def test_fp16_amp_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    model = TinySeg()
    with pytest.raises(ValueError, match="fp16 autocast needs CUDA.*bf16"):
        AMPTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1), dtype="fp16")
