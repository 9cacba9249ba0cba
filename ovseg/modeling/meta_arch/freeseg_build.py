"""FreeSeg's main stage from a config: the modules and settings ``FreeSeg.__init__`` takes."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

from ...clip import CLIPTeacher, build_clip_teacher
from ...clip.prompt_names import get_prompt_names
from ..backbone import build_backbone
from ..freeseg import AdaptivePromptLearner, TextVisualInteraction, load_prompt_tokens
from ..freeseg.tasks import (
    ensemble_seen_classes,
    post_config,
    semantic_targets,
    test_tasks_for,
    train_tasks_for,
)
from ..freeseg.test_time import TestTimePromptTuning
from ..mask_classification import (
    HungarianMatcher,
    MaskClassificationCriterion,
    MaskedAttentionDecoder,
    TextCosineClassHead,
    build_pixel_decoder,
)
from .base import OpenVocabSegmentor

__all__ = ["clip_temperature", "dataset_facts", "freeseg_config", "thing_names"]


def thing_names(cfg, datasets: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    """Thing classes (metadata ``thing_classes``) of ``datasets``; default: the training
    and test sets."""
    names = []
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST) if datasets is None else datasets:
        names += list(MetadataCatalog.get(name).get("thing_classes", None) or ())
    return tuple(dict.fromkeys(names))


def dataset_facts(cfg) -> Dict[str, Dict[str, Tuple[str, ...]]]:
    """Per test set, what FreeSeg reads of it at test (its inputs carry its name): the tasks
    its evaluator needs, the classes the ensemble weights as seen (the training's and its
    own seen), its thing classes (its own; the training's where it declares none). One test
    set's split or thing list never changes another's outputs."""
    facts = {}
    for name in cfg.DATASETS.TEST:
        own_things = thing_names(cfg, [name])
        facts[name] = {
            "test_tasks": test_tasks_for(cfg, name),
            "seen_classes": ensemble_seen_classes(cfg, [name]),
            "thing_classes": own_things or thing_names(cfg, cfg.DATASETS.TRAIN),
        }
    return facts


def clip_temperature(value: float, teacher: CLIPTeacher) -> float:
    """MODEL.FREESEG.CLIP_TEMPERATURE, or (0) the loaded CLIP's own exp(logit_scale)."""
    if value < 0:
        raise ValueError(
            f"MODEL.FREESEG.CLIP_TEMPERATURE must be > 0, or 0 for the CLIP's own logit scale; "
            f"got {value}"
        )
    return float(value) if value > 0 else float(teacher.model.logit_scale.detach().exp())


def freeseg_config(cfg) -> Dict:
    """The keyword arguments of :class:`ovseg.modeling.meta_arch.freeseg.FreeSeg` from ``cfg``."""
    fs, mf = cfg.MODEL.FREESEG, cfg.MODEL.MASK_FORMER
    teacher = build_clip_teacher(cfg)
    backbone = build_backbone(cfg, teacher=teacher)
    pixel_decoder = build_pixel_decoder(cfg, backbone.output_shape())
    conv_dim, mask_dim = cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, cfg.MODEL.SEM_SEG_HEAD.MASK_DIM
    if conv_dim != mask_dim:
        raise ValueError(
            f"FreeSeg's interaction is shared by the pixel maps and the mask features: "
            f"MODEL.SEM_SEG_HEAD.CONVS_DIM {conv_dim} must equal MASK_DIM {mask_dim}"
        )
    inter = fs.INTERACTION
    head = TextCosineClassHead(
        mf.HIDDEN_DIM, teacher.embed_dim, 4 * mf.HIDDEN_DIM, 2, fs.TEMPERATURE
    )
    prompt = AdaptivePromptLearner(
        teacher,
        task_names=fs.TASK_NAMES,
        num_class_tokens=fs.NUM_CLASS_PROMPT_TOKENS,
        num_task_tokens=fs.NUM_TASK_PROMPT_TOKENS,
        cache_by_task=fs.PROMPT_CACHE_BY_TASK,
        prompt_names=get_prompt_names(cfg.MODEL.CLIP.PROMPT_NAMES),
    )
    if fs.PROMPT_CHECKPOINT:
        load_prompt_tokens(prompt, fs.PROMPT_CHECKPOINT)
    matcher = HungarianMatcher(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT)
    return {
        **OpenVocabSegmentor.base_config(cfg),
        "size_divisibility": mf.SIZE_DIVISIBILITY,
        "pixel_mean": cfg.MODEL.PIXEL_MEAN,
        "pixel_std": cfg.MODEL.PIXEL_STD,
        "teacher": teacher,
        "backbone": backbone,
        "pixel_decoder": pixel_decoder,
        "interaction": TextVisualInteraction(
            q_dim=conv_dim,
            k_dim=teacher.embed_dim,
            embed_dim=inter.EMBED_DIM,
            num_heads=inter.NUM_HEADS,
            dropout=inter.DROPOUT,
            layer_scale_init=inter.LAYER_SCALE_INIT,
            stacked_key_norm=inter.STACKED_KEY_NORM,
        ),
        "decoder": MaskedAttentionDecoder(cfg, in_channels=conv_dim, class_head=head),
        "criterion": MaskClassificationCriterion(
            matcher=matcher,
            class_weight=mf.CLASS_WEIGHT,
            mask_weight=mf.MASK_WEIGHT,
            dice_weight=mf.DICE_WEIGHT,
            no_object_weight=mf.NO_OBJECT_WEIGHT,
            deep_supervision=mf.DEEP_SUPERVISION,
            num_aux_losses=mf.NUM_AUX_LOSSES,
        ),
        "prompt": prompt,
        "train_tasks": train_tasks_for(cfg),
        "test_tasks": test_tasks_for(cfg),
        "seen_classes": ensemble_seen_classes(cfg),
        "thing_classes": thing_names(cfg),
        "dataset_facts": dataset_facts(cfg),
        "clip_ensemble": fs.CLIP_ENSEMBLE,
        "ensemble_weight": fs.ENSEMBLE_WEIGHT,
        "mask_threshold": fs.MASK_THRESHOLD,
        "mask_expand_ratio": fs.MASK_EXPAND_RATIO,
        "clip_temperature": clip_temperature(fs.CLIP_TEMPERATURE, teacher),
        "post": post_config(cfg),
        "test_prompt_tuning": TestTimePromptTuning.from_config(cfg),
        "semantic_targets": semantic_targets(cfg),
    }
