"""Speed options applied to a built model: channels-last layout and ``torch.compile``;
and the frozen CLIP tower's weights in bf16 (``ovseg/clip/frozen_dtype.py``).

Both are off by default and change no numerics beyond floating-point reassociation:
MODEL.CHANNELS_LAST stores the convolution weights NHWC (faster cuDNN kernels for the
convolutional students under autocast; a convolution with channels-last weights answers
in that layout whatever its input's), MODEL.COMPILE compiles the model's network modules in place
(``nn.Module.compile``: parameter names and checkpoints are unchanged), the frozen CLIP tower
included where the network calls it (ZegCLIP's prompted backbone runs the tower's blocks),
and the student's loss function where it declares one (``loss_fn``).
"""

from __future__ import annotations

import logging
from typing import List

import torch
from torch import nn

from detectron2.config import CfgNode

from ..clip.attention import token_major_attention
from ..clip.frozen_dtype import FROZEN_DTYPES, cast_frozen_tower
from ..clip.teacher import CLIPTeacher

__all__ = [
    "COMPILE_SKIP",
    "apply_speed_options",
    "cast_frozen_towers",
    "compile_model",
]

logger = logging.getLogger(__name__)

# children never compiled: the teacher (its text encoder runs once per vocabulary, cached;
# its image tower is compiled through whichever network module calls it) and the text
# classifier (a memoised lookup)
COMPILE_SKIP = ("teacher", "classifier")


def cast_frozen_towers(model: nn.Module, name: str) -> int:
    """:func:`cast_frozen_tower` on the image tower of every CLIP teacher in ``model``.

    Args:
        model (nn.Module): a built model.
        name (str): MODEL.CLIP.FROZEN_DTYPE, a key of ``FROZEN_DTYPES``.

    Returns:
        int: the number of tensors cast.
    """
    if name not in FROZEN_DTYPES:
        raise ValueError(f"MODEL.CLIP.FROZEN_DTYPE={name!r}; choose one of {sorted(FROZEN_DTYPES)}")
    dtype = FROZEN_DTYPES[name]
    teachers = [m for m in model.modules() if isinstance(m, CLIPTeacher)]
    if dtype is not None:
        for teacher in teachers:  # checkpoints record the weights as loaded, not as cast
            teacher.tensors_sha256  # noqa: B018 (computed once, cached)
    towers = {id(m.model.visual): m.model.visual for m in teachers}
    count = sum(cast_frozen_tower(visual, dtype) for visual in towers.values())
    if dtype is not None:
        logger.info(f"Frozen CLIP image tower: {count} weight tensors cast to {dtype}")
    return count


def compile_model(model: nn.Module, mode: str = "default", backend: str = "inductor") -> List[str]:
    """Compile the model's network children in place, and its ``loss_fn`` if it has one.

    Args:
        model (nn.Module): an ovseg meta-architecture.
        mode (str): ``torch.compile``'s mode ("default", "reduce-overhead",
            "max-autotune"); inductor's only (other backends take none).
        backend (str): ``torch.compile``'s backend ("inductor"; "aot_eager" traces the
            graphs without generating code).

    Returns:
        list[str]: the names of what was compiled.
    """
    options = {"backend": backend, "dynamic": None}
    if backend == "inductor":
        options["mode"] = mode
    done = []
    for name, child in model.named_children():
        if name in COMPILE_SKIP or not any(True for _ in child.parameters()):
            continue
        child.compile(**options)
        done.append(name)
    if callable(getattr(model, "loss_fn", None)):
        model.loss_fn = torch.compile(model.loss_fn, **options)
        done.append("loss_fn")
    return done


def apply_speed_options(model: nn.Module, cfg: CfgNode) -> nn.Module:
    """MODEL.CLIP.FROZEN_DTYPE, MODEL.CLIP.TOKEN_MAJOR_ATTENTION, MODEL.CHANNELS_LAST and
    MODEL.COMPILE on a built model (in place; returned).

    Args:
        model (nn.Module): from detectron2's ``build_model(cfg)``.
        cfg (CfgNode): reads MODEL.CLIP.FROZEN_DTYPE, MODEL.CLIP.TOKEN_MAJOR_ATTENTION,
            MODEL.CHANNELS_LAST, MODEL.COMPILE, MODEL.COMPILE_MODE.

    Returns:
        nn.Module: the same model.
    """
    cast_frozen_towers(model, cfg.MODEL.CLIP.FROZEN_DTYPE)
    if not cfg.MODEL.CLIP.TOKEN_MAJOR_ATTENTION:  # the teacher switched it on
        token_major_attention(model, enabled=False)
    if cfg.MODEL.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    if cfg.MODEL.COMPILE:
        done = compile_model(model, cfg.MODEL.COMPILE_MODE)
        if done:
            logger.info(f"MODEL.COMPILE: compiled {', '.join(done)} of {type(model).__name__}")
        else:  # e.g. MaskCLIP: its one network is the teacher (COMPILE_SKIP)
            logger.warning(
                f"MODEL.COMPILE: {type(model).__name__} has nothing to compile (its children "
                f"are {[n for n, _ in model.named_children()]}; never compiled: "
                f"{list(COMPILE_SKIP)}); the model runs as without it"
            )
    return model
