"""Optimizer and learning-rate schedule of every ovseg method, built from SOLVER.*."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from fvcore.common.param_scheduler import ParamScheduler

from detectron2.config import CfgNode
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler

_NORM_TYPES = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)
# parameter-name fragments that mark embeddings and learnable temperatures (decay
# SOLVER.WEIGHT_DECAY_EMBED)
_EMBED_KEYS = (
    "pos_embed",
    "positional_embedding",
    "class_embedding",
    "prompt",
    "query_embed",
    "relative_position_bias_table",
    "absolute_pos_embed",
    "bg_embed",
    "logit_scale",
)


def get_param_groups(cfg: CfgNode, model: torch.nn.Module) -> list[dict[str, Any]]:
    """One group per trainable parameter with its lr and weight decay.

    Rules, in order: ``backbone.*`` gets SOLVER.BACKBONE_MULTIPLIER; names containing any of
    SOLVER.LR_MULTIPLIER_KEYS get SOLVER.LR_MULTIPLIER on top; norm weights/biases get
    SOLVER.WEIGHT_DECAY_NORM; embeddings get SOLVER.WEIGHT_DECAY_EMBED; other biases
    SOLVER.WEIGHT_DECAY_BIAS when set; every bias's lr is multiplied by SOLVER.BIAS_LR_FACTOR
    (1 but in the Detectron recipe XPM trains with). Frozen parameters are left out.
    """
    base_lr = cfg.SOLVER.BASE_LR
    wd = cfg.SOLVER.WEIGHT_DECAY
    wd_bias = cfg.SOLVER.WEIGHT_DECAY_BIAS if cfg.SOLVER.WEIGHT_DECAY_BIAS is not None else wd
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{pname}" if module_name else pname
            lr, decay = base_lr, wd
            if full.startswith("backbone.") or ".backbone." in full:
                lr *= cfg.SOLVER.BACKBONE_MULTIPLIER
            if any(k in full for k in cfg.SOLVER.LR_MULTIPLIER_KEYS):
                lr *= cfg.SOLVER.LR_MULTIPLIER
            if pname == "bias":
                lr *= cfg.SOLVER.BIAS_LR_FACTOR
            if isinstance(module, _NORM_TYPES):
                decay = cfg.SOLVER.WEIGHT_DECAY_NORM
            elif any(k in full for k in _EMBED_KEYS) or isinstance(module, torch.nn.Embedding):
                decay = cfg.SOLVER.WEIGHT_DECAY_EMBED
            elif pname == "bias":
                decay = wd_bias
            groups.append({"params": [param], "lr": lr, "weight_decay": decay, "name": full})
    if not groups:
        raise ValueError(
            "The model has no trainable parameters; a training-free method (e.g. MaskCLIP) "
            "runs with --eval-only."
        )
    return groups


def _full_model_clipping(optim_cls: type, clip_norm: float) -> type:
    """An optimizer class that clips the gradient norm of all parameters together."""

    class FullModelGradientClippingOptimizer(optim_cls):
        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
            return super().step(closure=closure)

    return FullModelGradientClippingOptimizer


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW over :func:`get_param_groups`, with SOLVER.CLIP_GRADIENTS applied."""
    groups = get_param_groups(cfg, model)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        cls = torch.optim.SGD
        kwargs: dict[str, Any] = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    elif name == "ADAMW":
        cls, kwargs = torch.optim.AdamW, {}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}; supported: SGD, ADAMW.")
    if use_fused(cfg, groups):
        kwargs["fused"] = True
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        cls = _full_model_clipping(cls, clip.CLIP_VALUE)
    elif clip.ENABLED:
        cls = maybe_add_gradient_clipping(cfg, cls)
    # each group keeps its parameter's "name": a resume compares them with the saved state's
    # (ovseg.engine.resume.check_saved_parameters)
    return cls(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)


def use_fused(cfg: CfgNode, groups: list[dict[str, Any]]) -> bool:
    """SOLVER.FUSED_OPTIMIZER, where it applies: every parameter on CUDA, in floating point
    (the fused kernel updates all parameters in one launch instead of several per tensor)."""
    params = [p for g in groups for p in g["params"]]
    return bool(cfg.SOLVER.FUSED_OPTIMIZER) and all(
        p.is_cuda and p.is_floating_point() for p in params
    )


class PolyParamScheduler(ParamScheduler):
    """``(1 - t) ** power``, never below ``constant_ending`` of the start, t in [0, 1].

    ``formula="mmcv"`` is mmcv's ``PolyLrUpdaterHook`` with ``min_lr`` = ``constant_ending`` x
    the group's lr: ``(1 - e) (1 - t) ** power + e`` (mmcv 1.4.4
    ``mmcv/runner/hooks/lr_updater.py:240-241``). ``step_iters`` > 0 holds t on multiples of
    that many of ``max_iter`` iterations (an epoch stepped scheduler, PyTorch Lightning's
    ``LambdaLR`` default).
    """

    def __init__(
        self,
        power: float = 0.9,
        constant_ending: float = 0.0,
        formula: str = "ovseg",
        step_iters: int = 0,
        max_iter: int = 0,
    ) -> None:
        self.power = power
        self.constant_ending = constant_ending
        self.formula = formula
        self.step_iters = step_iters
        self.max_iter = max_iter

    def __call__(self, where: float) -> float:
        if self.step_iters > 0:  # the iteration back from where = it / max_iter, floored
            it = round(where * self.max_iter) // self.step_iters * self.step_iters
            where = it / self.max_iter
        value = (1.0 - where) ** self.power
        if self.formula == "mmcv":
            return (1.0 - self.constant_ending) * value + self.constant_ending
        return max(value, self.constant_ending)


class MmcvWarmupParamScheduler(ParamScheduler):
    """mmcv's iteration warm-up over ``scheduler``: before ``warmup_iters`` its value times
    ``1 - (1 - it / warmup_iters) (1 - ratio)`` ("linear") or times ``ratio`` ("constant"),
    it the 0-based iteration (mmcv 1.4.4 ``mmcv/runner/hooks/lr_updater.py:88-93, :137-145``;
    ``runner.iter`` counts finished iterations, ``iter_based_runner.py:60, :69``)."""

    def __init__(
        self, scheduler: ParamScheduler, ratio: float, warmup_iters: int, method: str, max_iter: int
    ) -> None:
        if method not in ("linear", "constant"):
            raise ValueError(
                f"SOLVER.WARMUP_METHOD={method!r} with SOLVER.POLY_FORMULA 'mmcv'; mmcv's "
                "warm-ups here are 'linear' and 'constant'."
            )
        self.scheduler = scheduler
        self.ratio = ratio
        self.warmup_iters = warmup_iters
        self.method = method
        self.max_iter = max_iter

    def __call__(self, where: float) -> float:
        value = self.scheduler(where)
        it = round(where * self.max_iter)
        if it >= self.warmup_iters:
            return value
        if self.method == "constant":
            return value * self.ratio
        return value * (1 - (1 - it / self.warmup_iters) * (1 - self.ratio))


def _poly_scheduler(cfg: CfgNode) -> ParamScheduler:
    """The poly multiplier of SOLVER.POLY_* with its warm-up, checked."""
    s = cfg.SOLVER
    if s.POLY_FORMULA not in ("ovseg", "mmcv"):
        raise ValueError(f"SOLVER.POLY_FORMULA={s.POLY_FORMULA!r}; use 'ovseg' or 'mmcv'.")
    step = s.POLY_STEP_ITERS
    if step < 0 or (step > 0 and s.MAX_ITER % step != 0):
        raise ValueError(
            f"SOLVER.POLY_STEP_ITERS={step} with SOLVER.MAX_ITER={s.MAX_ITER}: the step must be "
            "0 (every iteration) or divide MAX_ITER (a whole number of epochs)."
        )
    poly = PolyParamScheduler(
        s.POLY_LR_POWER, s.POLY_LR_CONSTANT_ENDING, s.POLY_FORMULA, step, s.MAX_ITER
    )
    if s.POLY_FORMULA == "mmcv":
        if s.WARMUP_ITERS <= 0:
            return poly
        return MmcvWarmupParamScheduler(
            poly, s.WARMUP_FACTOR, s.WARMUP_ITERS, s.WARMUP_METHOD, s.MAX_ITER
        )
    return WarmupParamScheduler(
        poly,
        s.WARMUP_FACTOR,
        min(s.WARMUP_ITERS / max(s.MAX_ITER, 1), 1.0),
        s.WARMUP_METHOD,
    )


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """WarmupPolyLR (ovseg) or any of detectron2's schedules by SOLVER.LR_SCHEDULER_NAME."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    return LRMultiplier(optimizer, multiplier=_poly_scheduler(cfg), max_iter=cfg.SOLVER.MAX_ITER)
