"""Speed options applied to a built model: channels-last layout and ``torch.compile``;
and the frozen CLIP tower's weights in bf16 (``ovseg/clip/frozen_dtype.py``).

Channels-last and compilation change no numerics beyond floating-point reassociation, but
for one: inductor rounds a chain of low-precision operations once, at its end, where eager
rounds each (MODEL.COMPILE_LOSS keeps eager's rounding, MODEL.COMPILE's modes do not).
MODEL.CHANNELS_LAST stores the convolution weights NHWC (faster cuDNN kernels for the
convolutional students under autocast; a convolution with channels-last weights answers in
that layout whatever its input's). MODEL.COMPILE compiles the model's network modules in place
(``nn.Module.compile``: parameter names and checkpoints are unchanged), the frozen CLIP tower
included where the network calls it (ZegCLIP's prompted backbone runs the tower's blocks),
and the student's loss function where it declares one (``loss_fn``). Both are off by
default; MODEL.COMPILE_LOSS, which compiles the loss function alone when MODEL.COMPILE is
off, is on by default on CUDA ("auto").
"""

from __future__ import annotations

import logging
from typing import List, Optional

import torch
from torch import nn

from detectron2.config import CfgNode

from ..clip.attention import token_major_attention
from ..clip.frozen_dtype import FROZEN_DTYPES, cast_frozen_tower
from ..clip.teacher import CLIPTeacher

__all__ = [
    "COMPILE_SKIP",
    "LOSS_COMPILE_SETTINGS",
    "apply_speed_options",
    "cast_frozen_towers",
    "compile_loss",
    "compile_model",
    "loss_compile_wanted",
]

logger = logging.getLogger(__name__)

# children never compiled: the teacher (its text encoder runs once per vocabulary, cached;
# its image tower is compiled through whichever network module calls it) and the text
# classifier (a memoised lookup)
COMPILE_SKIP = ("teacher", "classifier")
#: MODEL.COMPILE_LOSS's values
LOSS_COMPILE_SETTINGS = ("auto", "always", "never")


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
    if _compile_loss_fn(model, options):
        done.append("loss_fn")
    return done


def _compile_loss_fn(model: nn.Module, options: dict) -> bool:
    """The model's ``loss_fn`` replaced by ``torch.compile(loss_fn, **options)`` where it
    declares one; True when it does."""
    loss_fn = getattr(model, "loss_fn", None)
    if not callable(loss_fn):
        return False
    model.loss_fn = torch.compile(loss_fn, **options)
    return True


def apply_speed_options(model: nn.Module, cfg: CfgNode) -> nn.Module:
    """MODEL.CLIP.FROZEN_DTYPE, MODEL.CLIP.TOKEN_MAJOR_ATTENTION, MODEL.CHANNELS_LAST,
    MODEL.COMPILE and MODEL.COMPILE_LOSS on a built model (in place; returned).

    Args:
        model (nn.Module): from detectron2's ``build_model(cfg)``.
        cfg (CfgNode): reads MODEL.CLIP.FROZEN_DTYPE, MODEL.CLIP.TOKEN_MAJOR_ATTENTION,
            MODEL.CHANNELS_LAST, MODEL.COMPILE, MODEL.COMPILE_MODE, MODEL.COMPILE_LOSS,
            MODEL.DEVICE.

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
    else:
        compile_loss(model, cfg.MODEL.COMPILE_LOSS, cfg.MODEL.DEVICE)
    return model


def loss_compile_wanted(setting: str, device: str, triton: Optional[bool] = None) -> bool:
    """Whether MODEL.COMPILE_LOSS ``setting`` compiles the loss of a model on ``device``:
    "always"; "never"; "auto" on CUDA where triton (inductor's GPU code generator) imports
    (``triton``: that, None = look)."""
    if setting not in LOSS_COMPILE_SETTINGS:
        raise ValueError(
            f"MODEL.COMPILE_LOSS={setting!r}; choose one of {list(LOSS_COMPILE_SETTINGS)}"
        )
    if setting != "auto":
        return setting == "always"
    if torch.device(device).type != "cuda":
        return False
    if triton is None:
        from torch.utils._triton import has_triton

        triton = has_triton()
    return bool(triton)


def compile_loss(model: nn.Module, setting: str, device: str, backend: str = "inductor") -> bool:
    """MODEL.COMPILE_LOSS: the model's ``loss_fn`` replaced by its ``torch.compile`` form
    (in place; ``backend`` as :func:`compile_model`'s) where :func:`loss_compile_wanted`;
    True when it was.

    A loss over full-size per-class masks is memory-bound in eager mode: ZegCLIP's focal and
    dice terms of 3 decoder layers at the label size are 112 passes over (B, K, H, W) tensors
    per step, forward and backward (4.1 GB per 512 x 512 image of 15 classes); inductor fuses
    them into a few kernels. Compiling the loss alone takes seconds, not the minutes of the
    whole network (MODEL.COMPILE), and its shapes change only with the vocabulary group.
    Inductor keeps eager's rounding at each cast to a lower precision
    (``emulate_precision_casts``): LSeg's official fp16 logits round the features and then
    their scaled product as the eager step does, where inductor alone rounds once.
    """
    if not loss_compile_wanted(setting, device):
        return False
    options = {"backend": backend, "dynamic": None}
    if backend == "inductor":  # a cast rounds as eager's does (LSeg's official fp16 logits)
        options["options"] = {"emulate_precision_casts": True}
    if not _compile_loss_fn(model, options):
        if setting == "always":
            logger.warning(
                f"MODEL.COMPILE_LOSS always: {type(model).__name__} declares no loss_fn to "
                "compile; the model runs as without it"
            )
        return False
    logger.info(
        f"MODEL.COMPILE_LOSS {setting}: compiled the loss_fn of {type(model).__name__} (the "
        "first training step compiles its kernels; MODEL.COMPILE_LOSS never keeps it eager)"
    )
    return True
