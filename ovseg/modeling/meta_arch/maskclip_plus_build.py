"""MaskCLIP+ from a config: its settings and the teacher labels it trains from."""

from __future__ import annotations

import shlex
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from torch import nn

from ...clip import CLIPTeacher
from ...pseudo import PseudoLabelSpec, check_source, expected_teacher
from ...vocab import training_vocabulary
from ..text_classifier import LearnedBackground, TextClassifier
from ..text_embeddings_file import FileTextEmbeddings

__all__ = [
    "LOSS_NORMALIZATIONS",
    "PSEUDO_LABEL_CLASSES",
    "PSEUDO_LABEL_PIXELS",
    "TEACHER_INPUT_NORMALIZATIONS",
    "check_settings",
    "check_zero_shot_setting",
    "generate_command",
    "maskclip_plus_config",
    "maskclip_plus_pseudo_labels",
    "scored_names",
    "student_classifier",
]

# the classes the labellers score: "unseen" (official) or "all" (a label is kept only if
# it is an unseen class)
PSEUDO_LABEL_CLASSES = ("unseen", "all")
# the pixels that get a pseudo-label: "ignore" (every pixel without ground truth: the
# transductive mapping's unseen and void pixels; annotation-free: every pixel) or "unseen"
# (the official protocol: the pixels whose ground truth is an unseen class, annotation-free:
# any class; void stays ignored; ZERO_SHOT_SETTING "none" brings those labels, which only
# locate the pixels)
PSEUDO_LABEL_PIXELS = ("ignore", "unseen")
# what the cross-entropy sum is divided by: "valid" (pixels with a target) or "all" (every
# pixel of the padded batch, mmseg's mean with avg_non_ignore False, the official loss)
LOSS_NORMALIZATIONS = ("valid", "all")
# how the teacher of PSEUDO_LABEL_SOURCE "online_augmented" sees the crop: "clip" (CLIP's
# mean/std) or "student" (the student's MODEL.PIXEL_MEAN/STD: the official code feeds CLIP
# the crop the student normalised)
TEACHER_INPUT_NORMALIZATIONS = ("clip", "student")
_CHOICES = {
    "PSEUDO_LABEL_CLASSES": PSEUDO_LABEL_CLASSES,
    "PSEUDO_LABEL_PIXELS": PSEUDO_LABEL_PIXELS,
    "LOSS_NORMALIZATION": LOSS_NORMALIZATIONS,
    "TEACHER_INPUT_NORMALIZATION": TEACHER_INPUT_NORMALIZATIONS,
}


def check_settings(
    source: str,
    classes: str,
    pixels: str = "ignore",
    loss_normalization: str = "valid",
    teacher_input_normalization: str = "clip",
) -> None:
    """Refuse MaskCLIPPlus settings outside their choices, naming the config key."""
    check_source(source, "MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE")
    given = {
        "PSEUDO_LABEL_CLASSES": classes,
        "PSEUDO_LABEL_PIXELS": pixels,
        "LOSS_NORMALIZATION": loss_normalization,
        "TEACHER_INPUT_NORMALIZATION": teacher_input_normalization,
    }
    for key, value in given.items():
        if value not in _CHOICES[key]:
            raise ValueError(
                f"MODEL.MASKCLIP_PLUS.{key}={value!r} is not one of {list(_CHOICES[key])}"
            )
    if teacher_input_normalization != "clip" and source != "online_augmented":
        raise ValueError(
            f"MODEL.MASKCLIP_PLUS.TEACHER_INPUT_NORMALIZATION={teacher_input_normalization!r} "
            "changes what the teacher sees of the training crop, which only PSEUDO_LABEL_SOURCE "
            f"'online_augmented' labels (got {source!r}); set it to 'clip'"
        )


def check_zero_shot_setting(cfg) -> None:
    """Refuse a training config whose zero-shot setting hides the pixels it pseudo-labels:
    "ignore" needs the transductive mapping (unseen pixels -> ignore), "unseen" needs the
    unseen classes' labels ("none")."""
    mc = cfg.MODEL.MASKCLIP_PLUS
    setting = cfg.MODEL.OVSEG.ZERO_SHOT_SETTING
    if not cfg.DATASETS.TRAIN:
        return
    if mc.PSEUDO_LABEL_PIXELS == "unseen" and setting != "none":
        raise ValueError(
            "MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_PIXELS 'unseen' finds the pixels to pseudo-label "
            "by their ground truth (an unseen class; annotation-free: any class), which needs "
            f"MODEL.OVSEG.ZERO_SHOT_SETTING 'none' (the labels only locate them), got {setting!r}"
        )
    if mc.PSEUDO_LABEL_PIXELS == "ignore" and not mc.ANNOTATION_FREE and setting != "transductive":
        raise ValueError(
            f"MaskCLIP+ (zero-shot) trains with MODEL.OVSEG.ZERO_SHOT_SETTING 'transductive' "
            f"(unseen names known, their pixels unlabelled), got {setting!r}; for the official "
            "protocol set MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_PIXELS 'unseen' with 'none'; for "
            "training without any ground truth set MODEL.MASKCLIP_PLUS.ANNOTATION_FREE True"
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
            # its own config.yaml and log, not over the training run's
            "OUTPUT_DIR",
            f"{root or '<store folder>'}_generation",
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
        # a store must come from this config's MaskCLIP teacher: settings, padding, weights
        teacher=expected_teacher(cfg, "MaskCLIP") if mc.PSEUDO_LABEL_SOURCE == "store" else None,
    )


def student_classifier(
    teacher: CLIPTeacher,
    templates: Sequence[str],
    prompt_names: Mapping[str, str],
    logit_scale: float,
    learnable_logit_scale: bool,
    background_class: Optional[str],
    background_init_std: float = 0.0,
    embeddings_file: Optional[FileTextEmbeddings] = None,
) -> TextClassifier:
    """The student's classifier: the teacher's renormalised text embeddings (or an embeddings
    file's rows), a temperature and optionally a learnable background, re-initialised
    normally with ``background_init_std`` when > 0 (the official ``torch.randn``: 1) instead
    of the classifier's own init."""
    classifier = TextClassifier(
        teacher,
        templates,
        logit_scale=logit_scale,
        learnable_logit_scale=learnable_logit_scale,
        background_class=background_class,
        renormalize=True,
        prompt_names=prompt_names,
        embeddings_file=embeddings_file,
    )
    if background_init_std > 0 and classifier.bg_embed is not None:
        nn.init.normal_(classifier.bg_embed.embedding, std=float(background_init_std))
    return classifier


def maskclip_plus_config(cfg) -> Dict[str, Any]:
    """MaskCLIPPlus keyword arguments read from ``MODEL.MASKCLIP_PLUS``, the shared
    ``MODEL.OVSEG`` keys and the training set (the modules are built by ``from_config``)."""
    mc = cfg.MODEL.MASKCLIP_PLUS
    ovseg = cfg.MODEL.OVSEG
    check_zero_shot_setting(cfg)
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
        "pseudo_label_pixels": mc.PSEUDO_LABEL_PIXELS,
        "normalize_embeddings": mc.NORMALIZE_EMBEDDINGS,
        "loss_normalization": mc.LOSS_NORMALIZATION,
        "teacher_input_normalization": mc.TEACHER_INPUT_NORMALIZATION,
        "background_init_std": mc.BG_EMBED_INIT_STD,
        "generate_command": generate_command(cfg, cfg.DATASETS.PSEUDO_LABELS),
        "self_training_start_iter": ovseg.SELF_TRAINING.START_ITER,
        "self_training_threshold": mc.SELF_TRAINING_THRESHOLD,
        "logit_scale": ovseg.LOGIT_SCALE,
        "learnable_logit_scale": ovseg.LEARNABLE_LOGIT_SCALE,
        "background_class": background,
        "distill_weight": mc.DISTILL_WEIGHT,
        "sem_seg_scores": "logits" if mc.UPSAMPLE_LOGITS else "probabilities",
    }
