"""MaskCLIP+ from a config: its settings and the teacher labels it trains from."""

from __future__ import annotations

import shlex
from typing import Any, Dict, Tuple

from ...pseudo import PseudoLabelSpec, check_source
from ...vocab import training_vocabulary
from ..text_classifier import LearnedBackground

__all__ = [
    "PSEUDO_LABEL_CLASSES",
    "check_settings",
    "generate_command",
    "maskclip_plus_config",
    "maskclip_plus_pseudo_labels",
    "scored_names",
]

# the classes the labellers score: "unseen" (official) or "all" (a label is kept only if
# it is an unseen class)
PSEUDO_LABEL_CLASSES = ("unseen", "all")


def check_settings(source: str, classes: str) -> None:
    """Refuse MaskCLIPPlus settings outside their choices, naming the config key."""
    check_source(source, "MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE")
    if classes not in PSEUDO_LABEL_CLASSES:
        raise ValueError(
            f"MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_CLASSES={classes!r} is not one of "
            f"{list(PSEUDO_LABEL_CLASSES)}"
        )


def scored_names(cfg) -> Tuple[str, ...]:
    """The classes the labellers score (a fitting store's vocabulary), in training order;
    () without a training set."""
    vocab = training_vocabulary(cfg)
    if vocab is None:
        return ()
    mc = cfg.MODEL.MASKCLIP_PLUS
    if mc.ANNOTATION_FREE or mc.PSEUDO_LABEL_CLASSES == "all":
        return vocab.names
    return vocab.unseen


def generate_command(cfg, root: str = "<store folder>") -> str:
    """The tools/generate_pseudo_labels.py command that fills the store this config reads."""
    names = scored_names(cfg)
    return shlex.join(
        [
            "python",
            "tools/generate_pseudo_labels.py",
            "--config-file",
            "<this config>",
            "--output",
            root or "<store folder>",
            "--threshold",
            str(cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD),
            "MODEL.META_ARCHITECTURE",
            "MaskCLIP",
            "MODEL.OVSEG.TEST_VOCABULARY",
            ",".join(names) if names else "<the scored classes>",
        ]
    )


def maskclip_plus_pseudo_labels(cfg) -> PseudoLabelSpec:
    """The teacher labels a MaskCLIP+ config trains from (see :mod:`ovseg.pseudo.spec`)."""
    mc = cfg.MODEL.MASKCLIP_PLUS
    return PseudoLabelSpec(
        source=mc.PSEUDO_LABEL_SOURCE,
        scored=scored_names(cfg),
        threshold=mc.PSEUDO_LABEL_THRESHOLD,
        command=generate_command(cfg, cfg.DATASETS.PSEUDO_LABELS),
    )


def maskclip_plus_config(cfg) -> Dict[str, Any]:
    """MaskCLIPPlus keyword arguments read from ``MODEL.MASKCLIP_PLUS``, the shared
    ``MODEL.OVSEG`` keys and the training set (the modules are built by ``from_config``)."""
    mc = cfg.MODEL.MASKCLIP_PLUS
    ovseg = cfg.MODEL.OVSEG
    setting = ovseg.ZERO_SHOT_SETTING
    if not mc.ANNOTATION_FREE and cfg.DATASETS.TRAIN and setting != "transductive":
        raise ValueError(
            f"MaskCLIP+ (zero-shot) trains with MODEL.OVSEG.ZERO_SHOT_SETTING 'transductive' "
            f"(unseen names known, their pixels unlabelled), got {setting!r}; for training "
            "without any ground truth set MODEL.MASKCLIP_PLUS.ANNOTATION_FREE True"
        )
    vocab = training_vocabulary(cfg)
    background = ovseg.BACKGROUND_CLASS if ovseg.BG_EMBED else None
    if background is not None:
        names = vocab.names if vocab is not None else ()
        LearnedBackground.check_trained(background, names, "in the training vocabulary")
    return {
        "unseen": vocab.unseen if vocab is not None else (),
        "annotation_free": mc.ANNOTATION_FREE,
        "pseudo_label_source": mc.PSEUDO_LABEL_SOURCE,
        "pseudo_label_classes": mc.PSEUDO_LABEL_CLASSES,
        "pseudo_label_threshold": mc.PSEUDO_LABEL_THRESHOLD,
        "generate_command": generate_command(cfg, cfg.DATASETS.PSEUDO_LABELS),
        "self_training_start_iter": ovseg.SELF_TRAINING.START_ITER,
        "self_training_threshold": mc.SELF_TRAINING_THRESHOLD,
        "logit_scale": ovseg.LOGIT_SCALE,
        "learnable_logit_scale": ovseg.LEARNABLE_LOGIT_SCALE,
        "background_class": background,
        "distill_weight": mc.DISTILL_WEIGHT,
    }
