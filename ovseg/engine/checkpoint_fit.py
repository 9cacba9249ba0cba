"""Whether a checkpoint fits the model it is loaded into: a misfit is an error, not a warning.

Every checkpoint ovseg saves records the meta-architecture that wrote it
(:func:`checkpoint_meta`). A checkpoint whose weights leave parts of the model at their
random initialisation, or that holds trained weights the model has no place for (other than a
few named, expected keys), is refused when it is meant to be the whole model: evaluation, the
demo, ``--resume``, and ``MODEL.WEIGHTS`` that an ovseg run wrote. A file without ovseg's
record (converted backbone weights, a model-zoo ``.pkl``) initialises part of a model; it is
refused only when none of its weights fit.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

from fvcore.common.checkpoint import _filter_reused_missing_keys
from torch import nn

__all__ = ["META_KEY", "CheckpointMismatchError", "checkpoint_meta", "check_fit"]

META_KEY = "ovseg_meta"
# keys a complete checkpoint may lack: BatchNorm's step counters (absent from checkpoints of
# older torch and from converted ones). The frozen CLIP teacher's weights are never in a
# checkpoint (ovseg.utils.state_dict.exclude_from_checkpoints forgives them) and detectron2
# forgives pixel_mean/pixel_std (DetectionCheckpointer._load_model).
ALLOWED_MISSING_SUFFIXES = ("num_batches_tracked",)
# keys a complete checkpoint may hold that the model has no place for: BatchNorm's counters
# (a FrozenBatchNorm has none) and pixel statistics (from MODEL.PIXEL_MEAN/STD, never trained;
# non-persistent buffers of some models). The frozen CLIP's weights, in files saved before they
# were kept out, are dropped by its load hook (exclude_from_checkpoints) and never reach here.
ALLOWED_EXTRA_SUFFIXES = ("num_batches_tracked", "pixel_mean", "pixel_std")
# training-only parts of another meta-architecture's checkpoint a model legitimately loads:
# an XPM teacher given a student's checkpoint (MODEL.XPM.TEACHER_WEIGHTS: the student's
# detector proposes) leaves the student's noise head and its running sigma (and the frozen
# copy of the teacher's RoI heads, in students saved before it was kept out of checkpoints)
TRAINING_ONLY_PREFIXES = {
    "XPMTeacher": ("roi_heads.mask_head.noise.", "last_mean_sigma", "teacher_roi_heads."),
}
_SHOWN = 8


# what ovseg's Trainer adds to detectron2's trainer and iteration entries (the data stream's
# position, the saving processes' RNG states: ovseg.engine.resume): the mark of an ovseg
# run's checkpoint whose ovseg_meta is gone
OVSEG_TRAINER_KEYS = ("data", "rng_states")


# the conversion reports' "method" of tools/convert_checkpoint.py methods whose result
# initialises part of a model (ovseg.convert.command.METHODS with a "part": a backbone)
PARTIAL_CONVERSIONS = ("ResNetV1c (ImageNet)",)


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it was loaded into."""


def architecture_of(model: nn.Module) -> str:
    """The model's meta-architecture name (its class, as META_ARCH_REGISTRY names it)."""
    return type(model).__name__


def checkpoint_meta(model: nn.Module, cfg: Any = None) -> dict:
    """What a saved checkpoint records about its writer (plain types only): the
    meta-architecture, ovseg's version, the CLIP teacher's identity and the run's config
    (:mod:`.checkpoint_record`)."""
    from .. import __version__
    from .checkpoint_record import teacher_record

    meta = {"meta_architecture": architecture_of(model), "ovseg_version": __version__}
    teacher = teacher_record(model)
    if teacher is not None:
        meta["clip_teacher"] = teacher
    if cfg is not None:
        meta["config"] = cfg.dump()
    return meta


def recorded_architecture(checkpoint: Mapping[str, Any]) -> Optional[str]:
    meta = checkpoint.get(META_KEY)
    return meta.get("meta_architecture") if isinstance(meta, Mapping) else None


def describe_writer(checkpoint: Mapping[str, Any]) -> Tuple[str, bool]:
    """What wrote ``checkpoint`` (for messages), and whether it holds a whole model by
    construction: a checkpoint an ovseg run wrote, one of ovseg's Trainer without
    ``ovseg_meta`` (its trainer and iteration entries and one of :data:`OVSEG_TRAINER_KEYS`,
    which detectron2's DefaultTrainer does not write: its checkpoints, with trainer and
    iteration too, initialise part of a model), or a converted official model whose
    conversion report says it fit the whole model of a config (tools/convert_checkpoint.py
    with --config-file; a backbone's or a starting checkpoint with parts built fresh is not)."""
    recorded = recorded_architecture(checkpoint)
    if recorded:
        return f"a {recorded} checkpoint", True
    conversion = checkpoint.get("conversion")
    if isinstance(conversion, Mapping):
        method = conversion.get("method", "?")
        whole = (
            bool(conversion.get("checked_model"))
            and not conversion.get("fresh")
            and method not in PARTIAL_CONVERSIONS
        )
        return f"a converted {method} checkpoint" + ("" if whole else " (part of a model)"), whole
    run = "trainer" in checkpoint and "iteration" in checkpoint
    if run and any(key in checkpoint for key in OVSEG_TRAINER_KEYS):
        return (
            "a training run's checkpoint of ovseg's Trainer that records no ovseg "
            "meta-architecture (its data position and RNG states: a whole model)",
            True,
        )
    return "a checkpoint that records no ovseg meta-architecture", False


def check_fit(
    model: nn.Module,
    incompatible: Any,
    *,
    path: str,
    recorded: Optional[str],
    complete: bool,
    num_loaded: int,
    some: bool = True,
    num_in_file: int = 0,
    writer: str = "",
    hint: str = "",
) -> None:
    """Raise :class:`CheckpointMismatchError` when the checkpoint at ``path`` misfits ``model``.

    Args:
        model: the (unwrapped) model loaded into.
        incompatible: fvcore's ``_IncompatibleKeys`` of the load.
        path (str): the checkpoint, for the message.
        recorded (str or None): the meta-architecture the checkpoint records.
        complete (bool): the checkpoint must hold every weight of the model (evaluation,
            resume, a checkpoint an ovseg run wrote); else only some need to fit.
        num_loaded (int): how many of the checkpoint's weights fit the model.
        some (bool): at least one weight must fit (a file meant to initialise the model).
            False also lets a complete file hold weights the model has no place for (the
            file may be another model's: a student's config relabelled as its teacher).
        num_in_file (int): how many weights the checkpoint holds.
        writer (str): what wrote the checkpoint (:func:`describe_writer`), for the message.
        hint (str): how the checkpoint's training config differs, for the message.
    """
    arch = architecture_of(model)
    shapes = [k for k, *_ in incompatible.incorrect_shapes]
    # fvcore takes mis-shaped tensors out before loading, so torch reports them missing too
    missing = [
        k for k in _unexpectedly_missing(model, incompatible.missing_keys) if k not in shapes
    ]
    extra = _unexpectedly_extra(arch, incompatible.unexpected_keys) if some else []
    total = len(model.state_dict())
    if some and not total and num_in_file and recorded != arch:
        # a model with no weights of its own (MaskCLIP: only the frozen CLIP) would
        # otherwise take another method's checkpoint silently and ignore all of it
        problems = [f"the model has no weights outside its frozen CLIP, and none of the "
                    f"file's {num_in_file} fit; {arch} needs no checkpoint (leave "
                    "MODEL.WEIGHTS empty)"]  # fmt: skip
        raise CheckpointMismatchError(_message(path, writer or _writer(recorded), arch, problems))
    if complete and (missing or shapes or extra):
        problems = []
        if missing:
            problems.append(f"{len(missing)} of the model's {total} weights are missing from it")
            problems.append("missing: " + _names(missing))
        if shapes:
            problems.append(
                f"{len(shapes)} of the model's {total} weights have other shapes: " + _names(shapes)
            )
        if extra:
            problems.append(
                f"{len(extra)} of the file's {num_in_file or len(extra)} weights have no place "
                "in the model (trained parts this config leaves out, which the model would "
                "drop): " + _names(extra)
            )
        if hint:
            problems.append(f"its training config differs: {hint}")
        raise CheckpointMismatchError(_message(path, writer or _writer(recorded), arch, problems))
    if some and total and num_loaded == 0:
        raise CheckpointMismatchError(
            _message(
                path,
                writer or _writer(recorded),
                arch,
                [f"none of its weights fit the model's {total}"],
            )
        )


def _unexpectedly_missing(model: nn.Module, missing: Sequence[str]) -> list:
    keys = [k for k in missing if not k.endswith(ALLOWED_MISSING_SUFFIXES)]
    return sorted(_filter_reused_missing_keys(model, keys)) if keys else []


def _unexpectedly_extra(arch: str, unexpected: Sequence[str]) -> list:
    allowed = TRAINING_ONLY_PREFIXES.get(arch, ())
    keys = [k for k in unexpected if not k.endswith(ALLOWED_EXTRA_SUFFIXES)]
    return sorted(k for k in keys if not k.startswith(allowed)) if keys else []


def _names(keys: Sequence[str]) -> str:
    more = f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _writer(recorded: Optional[str]) -> str:
    return f"a {recorded} checkpoint" if recorded else describe_writer({})[0]


def _message(path: str, writer: str, arch: str, problems: Sequence[str]) -> str:
    return (
        f"{path} does not fit this model: it is {writer}, and the model is {arch}; "
        + "; ".join(problems)
        + ". Pass the weights of a run of this config (MODEL.WEIGHTS), or the config of the "
        "run that wrote them."
    )
