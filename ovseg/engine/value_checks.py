"""Model, input and test values that no run can mean: a probability of 1.5, a negative loss
weight or temperature, an unknown norm or gradient-clip type, a sliding window that is not a
positive pair. Each would otherwise train or score something else without a word, or fail
deep inside torch / detectron2 (or at the first test image, after training) without naming
its key; :func:`check_values` (called by ``check_config`` at set-up) refuses them in one line.
"""

from __future__ import annotations

import math
from typing import Callable, List

from detectron2.config import CfgNode

from ..utils.config_keys import config_value
from .speed import LOSS_COMPILE_SETTINGS

__all__ = ["check_values"]


def _unit(v: float) -> bool:
    return 0 <= v <= 1


# (key, test, what the value must be): model and test values that no run can mean, which
# would otherwise train or score something else without a word (a negative loss weight, a
# threshold no probability reaches) or fail deep in a layer (a dropout of 1.5)
_VALUE_RULES: List[tuple[str, Callable[[float], bool], str]] = [
    ("MODEL.CLIP.LOGIT_SCALE", lambda v: v > 0, "a positive temperature"),
    ("MODEL.OVSEG.LOGIT_SCALE", lambda v: v > 0, "a positive temperature"),
    ("MODEL.MASKCLIP.PROMPT_DENOISE_THRESHOLD", _unit, "a probability in [0, 1]"),
    ("MODEL.MASKCLIP.KEY_SMOOTHING_THRESHOLD", _unit, "a probability in [0, 1]"),
    ("MODEL.ZEGCLIP.FOCAL_WEIGHT", lambda v: v >= 0, "a loss weight >= 0"),
    ("MODEL.ZEGCLIP.DICE_WEIGHT", lambda v: v >= 0, "a loss weight >= 0"),
    ("MODEL.ZEGCLIP.FOCAL_ALPHA", lambda v: v <= 1, "<= 1 (a negative alpha weighs nothing)"),
    ("MODEL.ZEGCLIP.FOCAL_GAMMA", lambda v: v >= 0, ">= 0"),
    ("MODEL.ZEGCLIP.CALIBRATION", _unit, "in [0, 1] (subtracted from sigmoid scores)"),
    ("MODEL.ZEGCLIP.PROMPT_DROPOUT", _unit, "a probability in [0, 1]"),
    ("MODEL.ZEGCLIP.DECODER_DROPOUT", _unit, "a probability in [0, 1]"),
    ("MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD", _unit, "a probability in [0, 1]"),
    ("MODEL.MASKCLIP_PLUS.SELF_TRAINING_THRESHOLD", _unit, "a probability in [0, 1]"),
    ("MODEL.MASKCLIP_PLUS.DISTILL_WEIGHT", lambda v: v >= 0, "a loss weight >= 0 (0 = off)"),
    ("MODEL.MASKCLIP_PLUS.BG_EMBED_INIT_STD", lambda v: v >= 0, ">= 0 (0 = the default)"),
    ("MODEL.SEM_SEG_HEAD.ASPP_DROPOUT", _unit, "a probability in [0, 1]"),
    ("MODEL.FREESEG.TEMPERATURE", lambda v: v > 0, "a positive temperature"),
    ("MODEL.FREESEG.CLIP_TEMPERATURE", lambda v: v >= 0, ">= 0 (0 = the CLIP's own)"),
    ("MODEL.FREESEG.MASK_THRESHOLD", _unit, "a probability in [0, 1]"),
    ("MODEL.FREESEG.ENSEMBLE_WEIGHT", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("MODEL.FREESEG.MASK_EXPAND_RATIO", lambda v: v >= 1, ">= 1"),
    ("MODEL.FREESEG.INTERACTION.DROPOUT", _unit, "a probability in [0, 1]"),
    ("MODEL.MASK_FORMER.DROPOUT", _unit, "a probability in [0, 1]"),
    ("MODEL.MASK_FORMER.CLASS_WEIGHT", lambda v: v >= 0, "a loss weight >= 0"),
    ("MODEL.MASK_FORMER.MASK_WEIGHT", lambda v: v >= 0, "a loss weight >= 0"),
    ("MODEL.MASK_FORMER.DICE_WEIGHT", lambda v: v >= 0, "a loss weight >= 0"),
    ("MODEL.MASK_FORMER.NO_OBJECT_WEIGHT", lambda v: v >= 0, "a loss weight >= 0"),
    ("MODEL.MASK_FORMER.TEST.SCORE_TEMPERATURE", lambda v: v >= 0, ">= 0 (0 = none)"),
    ("MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", _unit, "a probability in [0, 1]"),
    ("MODEL.MASK_FORMER.TEST.THING_SCORE_THRESHOLD", _unit, "a probability in [0, 1]"),
    ("MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", _unit, "a fraction in [0, 1]"),
    ("MODEL.XPM.LOGIT_SCALE", lambda v: v > 0, "a positive temperature"),
    ("MODEL.XPM.BACKGROUND_WEIGHT", lambda v: v >= 0, "a loss weight >= 0"),
    ("MODEL.XPM.PSEUDO_LOSS_SCALE", lambda v: v >= 0, "a loss scale >= 0"),
    ("MODEL.XPM.PSEUDO_MASK_THRESHOLD", _unit, "a probability in [0, 1]"),
    ("MODEL.XPM.PSEUDO_SCORE_THRESHOLD", _unit, "a score in [0, 1]"),
    ("MODEL.DPT.FEATURES", lambda v: v >= 1 and v == int(v), "a positive width"),
    ("INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    ("TEST.BACKGROUND_THRESHOLD", _unit, "in [0, 1] (0 = off)"),
    ("TEST.SLIDE_WINDOWS_PER_FORWARD", lambda v: v >= 1 and v == int(v), "a count >= 1"),
]

# (key, its values): names whose wrong spelling would fail inside detectron2 or torch
_CHOICE_RULES: List[tuple[str, tuple]] = [
    ("MODEL.CLIP.PRECISION", ("fp32", "bf16", "fp16")),
    # read only when pseudo instances are made (the tool, or online in the step)
    ("MODEL.XPM.REGION_EMBEDDING", ("crop", "pool", "teacher")),
    ("MODEL.XPM.PSEUDO_TEXT", ("noun", "class")),
    ("MODEL.DPT.NORM", ("", "BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "LN")),
    (
        "MODEL.COMPILE_MODE",
        ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    ),
    ("MODEL.COMPILE_LOSS", LOSS_COMPILE_SETTINGS),
    ("MODEL.MASK_FORMER.TEST.PIXEL_ASSIGNMENT", ("class", "query")),
    ("MODEL.MASK_FORMER.TEST.INSTANCE_MODE", ("freeseg", "topk")),
    ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", ("full_model", "value", "norm")),
]

# (key, test, what it must be) of sequence values
_PAIR_RULES: List[tuple[str, Callable[[list], bool], str]] = [
    (
        "TEST.SLIDE_WINDOW",
        lambda v: len(v) == 2 and all(x >= 1 for x in v),
        "(height, width), positive",
    ),
    (
        "TEST.SLIDE_STRIDE",
        lambda v: len(v) == 2 and all(x >= 1 for x in v),
        "(height, width), positive",
    ),
    (
        "INPUT.LSJ_SCALE_RANGE",
        lambda v: len(v) == 2 and 0 < v[0] <= v[1],
        "(low, high), 0 < low <= high",
    ),
    (
        "INPUT.RESIZE_RATIO_RANGE",
        lambda v: len(v) == 2 and 0 < v[0] <= v[1],
        "(low, high), 0 < low <= high",
    ),
]


def check_values(cfg: CfgNode) -> None:
    """Refuse model, input and test values outside what their key means (a probability of
    1.5, a negative loss weight or temperature, an unknown norm or clip type, a sliding
    window that is not a positive pair).

    Raises:
        ValueError: naming every offending key, its value and what it must be.
    """
    problems = []
    for key, ok, must in _VALUE_RULES:
        value = config_value(cfg, key, None)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            problems.append(f"{key}={value!r} (must be {must})")
    for key, choices in _CHOICE_RULES:
        value = config_value(cfg, key, None)
        if value is not None and value not in choices:
            problems.append(f"{key}={value!r} (must be one of {list(choices)})")
    for key, ok, must in _PAIR_RULES:
        value = config_value(cfg, key, None)
        if value is None:
            continue
        try:
            good = all(isinstance(x, (int, float)) for x in value) and ok(list(value))
        except TypeError:
            good = False
        if not good:
            problems.append(f"{key}={value!r} (must be {must})")
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":  # detectron2's, closed vocabulary
        for key, value in (("TEST.INFERENCE_MODE", cfg.TEST.INFERENCE_MODE),
                           ("TEST.AUG.ENABLED", cfg.TEST.AUG.ENABLED)):  # fmt: skip
            if value not in ("whole", False):
                problems.append(
                    f"{key}={value!r} (SemanticSegmentor tests whole images at one scale and "
                    "reads neither: set TEST.INFERENCE_MODE 'whole' and TEST.AUG.ENABLED False)"
                )
    if problems:
        raise ValueError("Nonsensical config values: " + "; ".join(problems))
