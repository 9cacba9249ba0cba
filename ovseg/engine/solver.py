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
    for g in groups:
        g.pop("name")
    return cls(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)


def use_fused(cfg: CfgNode, groups: list[dict[str, Any]]) -> bool:
    """SOLVER.FUSED_OPTIMIZER, where it applies: every parameter on CUDA, in floating point
    (the fused kernel updates all parameters in one launch instead of several per tensor)."""
    params = [p for g in groups for p in g["params"]]
    return bool(cfg.SOLVER.FUSED_OPTIMIZER) and all(
        p.is_cuda and p.is_floating_point() for p in params
    )


class PolyParamScheduler(ParamScheduler):
    """``(1 - t) ** power``, never below ``constant_ending`` of the start, t in [0, 1]."""

    def __init__(self, power: float = 0.9, constant_ending: float = 0.0) -> None:
        self.power = power
        self.constant_ending = constant_ending

    def __call__(self, where: float) -> float:
        value = (1.0 - where) ** self.power
        return max(value, self.constant_ending)


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """WarmupPolyLR (ovseg) or any of detectron2's schedules by SOLVER.LR_SCHEDULER_NAME."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    sched = PolyParamScheduler(cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.POLY_LR_CONSTANT_ENDING)
    sched = WarmupParamScheduler(
        sched,
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / max(cfg.SOLVER.MAX_ITER, 1), 1.0),
        cfg.SOLVER.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
