"""MaskCLIP+ from a config: its settings, its MaskCLIP labeller, and the store's check."""

from __future__ import annotations

import shlex
from typing import Any, Dict, Sequence, Tuple

from detectron2.data import MetadataCatalog

from ...clip import CLIPTeacher, get_templates
from ...pseudo import PseudoLabelStore
from ...vocab import resolve_vocabulary
from ..inference import INFERENCE_MODES
from .common import LearnedBackground
from .maskclip import MaskCLIP

__all__ = [
    "PSEUDO_LABEL_CLASSES",
    "PSEUDO_LABEL_SOURCES",
    "check_settings",
    "check_store",
    "generate_command",
    "labeller_from_config",
    "maskclip_plus_config",
    "training_vocabulary",
]


PSEUDO_LABEL_SOURCES = ("store", "online", "online_augmented")
PSEUDO_LABEL_CLASSES = ("unseen", "all")


def _norm(name: str) -> str:
    return name.strip().casefold()


def check_settings(
    source: str, classes: str, inference_mode: str, logit_scale: float, online_mapper
) -> None:
    """Refuse MaskCLIPPlus settings outside their choices, naming the config key."""
    if source not in PSEUDO_LABEL_SOURCES:
        raise ValueError(
            f"MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE={source!r} is not one of "
            f"{list(PSEUDO_LABEL_SOURCES)}"
        )
    if classes not in PSEUDO_LABEL_CLASSES:
        raise ValueError(
            f"MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_CLASSES={classes!r} is not one of "
            f"{list(PSEUDO_LABEL_CLASSES)}"
        )
    if inference_mode not in INFERENCE_MODES:
        raise ValueError(f"TEST.INFERENCE_MODE={inference_mode!r} is not one of {INFERENCE_MODES}")
    if not logit_scale > 0:
        raise ValueError(f"MODEL.MASKCLIP_PLUS.LOGIT_SCALE must be positive, got {logit_scale}")
    if source == "online" and online_mapper is None:
        raise ValueError(
            "PSEUDO_LABEL_SOURCE 'online' needs the test-mode mapper the store is generated "
            "with (built from DATASETS.TRAIN[0]; set it)"
        )


def labeller_from_config(cfg, teacher: CLIPTeacher) -> MaskCLIP:
    """The MaskCLIP teacher that ``train_net``/``generate_pseudo_labels`` would build from
    ``cfg`` with ``MODEL.META_ARCHITECTURE MaskCLIP``, sharing ``teacher`` (MaskCLIP's
    ``from_config`` with the same keys, except the teacher is not built twice)."""
    mc = cfg.MODEL.MASKCLIP
    return MaskCLIP(
        teacher=teacher,
        templates=get_templates(cfg.MODEL.CLIP.TEMPLATES),
        vocabulary=None,
        inference_mode=cfg.TEST.INFERENCE_MODE,
        slide_window=tuple(cfg.TEST.SLIDE_WINDOW),
        slide_stride=tuple(cfg.TEST.SLIDE_STRIDE),
        prompt_denoise=mc.PROMPT_DENOISE,
        prompt_denoise_threshold=mc.PROMPT_DENOISE_THRESHOLD,
        key_smoothing=mc.KEY_SMOOTHING,
        key_smoothing_threshold=mc.KEY_SMOOTHING_THRESHOLD,
        key_normalization=mc.KEY_NORMALIZATION,
        logit_scale=mc.LOGIT_SCALE,
        size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY,
    ).eval()


def training_vocabulary(cfg) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(training names, unseen names) of ``DATASETS.TRAIN[0]``; ((), ()) without one."""
    if not cfg.DATASETS.TRAIN:
        return (), ()
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    spec = cfg.MODEL.OVSEG.TRAIN_VOCABULARY
    if spec.strip():
        names = resolve_vocabulary(spec).names
    else:
        names = tuple(n.strip() for n in meta.get("stuff_classes", None) or ())
    unseen = {_norm(n) for n in meta.get("unseen_classes", None) or ()}
    return names, tuple(n for n in names if _norm(n) in unseen)


def scored_names(cfg) -> Tuple[str, ...]:
    """The classes the labellers score (the store's vocabulary), in training order."""
    names, unseen = training_vocabulary(cfg)
    mc = cfg.MODEL.MASKCLIP_PLUS
    if mc.ANNOTATION_FREE or mc.PSEUDO_LABEL_CLASSES == "all":
        return names
    return unseen


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


def maskclip_plus_config(cfg) -> Dict[str, Any]:
    """MaskCLIPPlus keyword arguments read from ``MODEL.MASKCLIP_PLUS`` and the dataset."""
    mc = cfg.MODEL.MASKCLIP_PLUS
    setting = cfg.MODEL.OVSEG.ZERO_SHOT_SETTING
    if not mc.ANNOTATION_FREE and cfg.DATASETS.TRAIN and setting != "transductive":
        raise ValueError(
            f"MaskCLIP+ (zero-shot) trains with MODEL.OVSEG.ZERO_SHOT_SETTING 'transductive' "
            f"(unseen names known, their pixels unlabelled), got {setting!r}; for training "
            "without any ground truth set MODEL.MASKCLIP_PLUS.ANNOTATION_FREE True"
        )
    _, unseen = training_vocabulary(cfg)
    online_mapper = None
    if mc.PSEUDO_LABEL_SOURCE == "online" and cfg.DATASETS.TRAIN:
        from ...data import build_dataset_mapper

        # the test-mode mapper tools/generate_pseudo_labels.py labels images with
        online_mapper = build_dataset_mapper(cfg, False, cfg.DATASETS.TRAIN[0])
    background = mc.BACKGROUND_CLASS if mc.BG_EMBED else None
    if background is not None:
        names, _ = training_vocabulary(cfg)
        LearnedBackground.check_trained(
            "MODEL.MASKCLIP_PLUS", background, names, "in the training vocabulary"
        )
    return {
        "unseen": unseen,
        "annotation_free": mc.ANNOTATION_FREE,
        "pseudo_label_source": mc.PSEUDO_LABEL_SOURCE,
        "pseudo_label_classes": mc.PSEUDO_LABEL_CLASSES,
        "pseudo_label_threshold": mc.PSEUDO_LABEL_THRESHOLD,
        "pseudo_label_store": cfg.DATASETS.PSEUDO_LABELS,
        "generate_command": generate_command(cfg, cfg.DATASETS.PSEUDO_LABELS),
        "online_mapper": online_mapper,
        "self_train_start": mc.SELF_TRAIN_START,
        "self_train_threshold": mc.SELF_TRAIN_THRESHOLD,
        "logit_scale": mc.LOGIT_SCALE,
        "background_class": background,
        "distill_weight": mc.DISTILL_WEIGHT,
    }


def check_store(
    root: str, scored: Sequence[str], threshold: float, command: str
) -> Tuple[str, ...]:
    """Open a store and check it was made over the ``scored`` classes at ``threshold``.

    Args:
        root (str): ``DATASETS.PSEUDO_LABELS``.
        scored: the classes the teacher must have scored (any order).
        threshold (float): ``MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD``.
        command (str): the generation command, for the error message.

    Returns:
        tuple[str, ...]: the store's vocabulary (label value i is name i).
    """
    store = PseudoLabelStore.open(root)
    have = sorted(_norm(n) for n in store.vocabulary)
    want = sorted(_norm(n) for n in scored)
    problems = []
    if have != want:
        problems.append(
            f"its teacher scored {list(store.vocabulary)} but this config's labellers score "
            f"{list(scored)} (MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_CLASSES / ANNOTATION_FREE)"
        )
    if abs(store.threshold - float(threshold)) > 1e-9:
        problems.append(
            f"its threshold is {store.threshold} but MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD "
            f"is {threshold}"
        )
    if problems:
        raise ValueError(
            f"Pseudo-label store {root!r} does not fit this MaskCLIP+ config: "
            + "; ".join(problems)
            + f". Generate a matching store with: {command}"
        )
    return store.vocabulary
