"""Every YAML under configs/, through one harness.

- The ``_BASE_`` chains: every chain is rooted at Base-ovseg.yaml, every ``Base-*.yaml`` is
  used by a leaf, and no file sets a key to the value its bases already give.
- Every leaf: its method's recipe (the paper's, outside configs/toy/), then built on CPU at a
  tiny size and run for one training step (training-free MaskCLIP: built, with its
  vocabulary). Real-dataset leaves swap their CLIP for the tiny random one of the same tower
  and train on a fixture ADE20K (or the toy world, for a learnable "background"); toy leaves
  keep their toy CLIP and train on a toy world.
(train_net.py end to end, once per method: tests/test_train_net.py.)
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ovseg_testing import (
    ADE20K_OPTS,
    CONFIGS,
    INSTANCE_OPTS,
    PANOPTIC_OPTS,
    ROOT,
    TOY_WORLD_OPTS,
    cpu_opts,
    header_commands,
    is_resnet_clip,
    make_store,
    registered_fewshot,
    registered_toy_world,
    tiny_clip_opts,
)
from ovseg_testing.bert import make_tiny_bert, require_transformers
from ovseg_testing.official_lr import lightning_steps_per_epoch
from ovseg_testing.panoptic import registered_tiny_panoptic
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage

from ovseg import add_ovseg_config
from ovseg.clip.prompt_names import get_prompt_names
from ovseg.convert.xpm import OFFICIAL_PIXEL_MEAN, OFFICIAL_PIXEL_STD
from ovseg.data.dataset_mappers import build_dataset_mapper
from ovseg.data.datasets import toy_world
from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.modeling.freeseg import tasks as freeseg_tasks
from ovseg.modeling.freeseg.tasks import ensemble_seen_classes, train_tasks_for
from ovseg.modeling.meta_arch.maskclip_plus_build import scored_names
from ovseg.pseudo import expected_teacher
from ovseg.vocab import training_vocabulary

ROOT_BASE = CONFIGS / "Base-ovseg.yaml"
FILES = sorted(CONFIGS.rglob("*.yaml"))
BASES = [p for p in FILES if p.name.startswith("Base-")]
LEAVES = [p for p in FILES if not p.name.startswith("Base-")]
# a leaf's method: its folder (configs/<dataset>/<folder>/) or, in configs/toy/, its name's start
FOLDERS = {
    "lseg": "LSeg",
    "zegclip": "ZegCLIP",
    "maskclip": "MaskCLIP",
    "maskclip_plus": "MaskCLIPPlus",
    "baseline": "SemanticSegmentor",
    "freeseg": "FreeSeg",
    "xpm_teacher": "XPMTeacher",
    "xpm_student": "XPMStudent",
}
MIN_LEAVES = {"LSeg": 19, "ZegCLIP": 15, "MaskCLIP": 8, "MaskCLIPPlus": 6, "SemanticSegmentor": 2}
MIN_LEAVES["FreeSeg"] = 4
MIN_LEAVES["FreeSegPromptLearner"] = 3
# folders holding a second meta-architecture: FreeSeg's prompt stage sits with FreeSeg
MORE_ARCHS = {"freeseg": ("FreeSegPromptLearner",)}
MIN_LEAVES.update(XPMTeacher=2, XPMStudent=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rel(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def _dataset(path: Path) -> str:
    return path.relative_to(CONFIGS).parts[0]


def _folder(path: Path) -> str:
    if _dataset(path) != "toy":
        # a method folder may hold its stages, named <folder>_<stage>_... (xpm/xpm_teacher_*)
        folder = path.parent.name
        stages = [f for f in FOLDERS if f.startswith(folder + "_") and path.stem.startswith(f)]
        return max(stages, key=len, default=folder)
    return max((f for f in FOLDERS if path.stem.startswith(f)), key=len, default=path.stem)


# ---------------------------------------------------------------- the _BASE_ chains
@functools.cache
def _own(path: Path) -> dict:
    """The file's own keys (parsed once per session: do not modify)."""
    return yaml.safe_load(path.read_text()) or {}


def _chain(path: Path) -> list[Path]:
    """``path``, its base, its base's base... up to the root."""
    chain = [path]
    while "_BASE_" in _own(chain[-1]):
        chain.append((chain[-1].parent / _own(chain[-1])["_BASE_"]).resolve())
    return chain


def _keys(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _keys(value, f"{prefix}{key}.")
        elif key != "_BASE_":
            yield prefix + key


@functools.cache
def _merged(path: Path):
    """detectron2's and ovseg's defaults plus ``path``'s chain, without load_config's CPU
    fallback (which would make "cuda" and "cpu" look equal); merged once per session, frozen."""
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.freeze()
    return cfg


def _value(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_every_chain_is_rooted_at_base_ovseg():
    roots = {_rel(p): _rel(_chain(p)[-1]) for p in FILES}
    assert {p: r for p, r in roots.items() if r != _rel(ROOT_BASE)} == {}


def test_every_base_is_used_by_a_leaf():
    used = {base for leaf in LEAVES for base in _chain(leaf)[1:]}
    assert sorted(_rel(p) for p in BASES if p not in used) == []


def test_no_file_sets_a_key_its_bases_already_give():
    restated = {}
    for path in FILES:
        bases = _chain(path)[1:]
        if not bases:
            continue
        set_by_bases = {key for base in bases for key in _keys(_own(base))}
        parent, child = _merged(bases[0]), _merged(path)
        same = [
            f"{key} = {_value(child, key)!r}"
            for key in _keys(_own(path))
            if key in set_by_bases and _value(child, key) == _value(parent, key)
        ]
        if same:
            restated[_rel(path)] = same
    assert restated == {}, f"keys set to what the _BASE_ chain already gives: {restated}"


def test_every_method_has_its_configs():
    archs = [_merged(p).MODEL.META_ARCHITECTURE for p in LEAVES]
    for arch, least in MIN_LEAVES.items():
        assert archs.count(arch) >= least, f"{arch}: {archs.count(arch)} leaves"


# ---------------------------------------------------------------- recipes, one per method
VARIANT = "_ovseg-variant"  # ovseg's choices beside a paper config
LSEG_SETTINGS = {"ade20k": "none", "voc": "inductive", "coco_stuff": "inductive"}
LSEG_SETTINGS.update(pcontext="inductive", toy="inductive", pascal5i="none", coco20i="none")
LSEG_SETTINGS.update(fss1000="none")
# the per-GPU batch the backbone lr is scaled to (lr = 0.004 / 16 * batch): ADE20K's released
# run as 16; the zero-shot module's default batch of 20 episodes
LSEG_LR_BATCH = {"pascal5i": 20, "coco20i": 20, "fss1000": 20}
# an epoch of the zero-shot folds: HSNet's training pairs (PASCAL) or distinct images (COCO)
# per fold, as datasets/README.md gives them from HSNet's lists
FOLD_EPISODES = {"pascal5i": (11394, 10255, 7797, 11594), "coco20i": (62040, 74381, 73035, 73808)}


def _lseg_recipe(path: Path, cfg) -> None:
    assert cfg.MODEL.OVSEG.ZERO_SHOT_SETTING == LSEG_SETTINGS[_dataset(path)]
    if _dataset(path) == "toy":
        return
    assert cfg.MODEL.CLIP.PRETRAINED == "openai" and not cfg.SOLVER.AMP.ENABLED
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == pytest.approx(0.1)
    if _dataset(path) in LSEG_LR_BATCH:  # the zero-shot folds: 0.004 / 16 per episode batch
        lr = 0.004 / 16 * LSEG_LR_BATCH[_dataset(path)]
        assert cfg.SOLVER.BASE_LR * cfg.SOLVER.BACKBONE_MULTIPLIER == pytest.approx(lr)
        if _dataset(path) in FOLD_EPISODES:  # 4 epochs of 20-episode batches, the last partial
            fold = int(cfg.DATASETS.TRAIN[0].split("_fold")[1][0])
            episodes = FOLD_EPISODES[_dataset(path)][fold]
            steps = lightning_steps_per_epoch(episodes, gpus=1, batch=20, accumulate=1)
            assert cfg.SOLVER.MAX_ITER == 4 * steps and cfg.SOLVER.IMS_PER_BATCH == 40
            assert cfg.DATASETS.TEST[0] == cfg.DATASETS.TRAIN[0].replace("_train", "_test")
        if _dataset(path) == "fss1000":  # 200 epochs (no early exit), poly stepped per epoch
            # of 5,200 training episodes (query + support: 2 images each, 40 per step)
            steps = lightning_steps_per_epoch(5200, gpus=1, batch=20, accumulate=1)
            assert (cfg.SOLVER.POLY_STEP_ITERS, cfg.SOLVER.MAX_ITER) == (steps, 200 * steps)
            assert cfg.SOLVER.IMS_PER_BATCH == 40 and cfg.SOLVER.POLY_FORMULA == "ovseg"
        # the paper's two encoders: ResNet-101 and ViT-L/16 (the ADE20K network)
        encoder = {
            "build_timm_vit_backbone": "vitl16",
            "build_torchvision_resnet_backbone": "r101",
        }
        assert path.stem.startswith(f"lseg_{encoder[cfg.MODEL.BACKBONE.NAME]}_")
        if encoder[cfg.MODEL.BACKBONE.NAME] == "vitl16":
            assert cfg.MODEL.VIT_BACKBONE.TIMM_MODEL == "vit_large_patch16_384"
            assert list(cfg.MODEL.DPT.REASSEMBLE_CHANNELS) == [256, 512, 1024, 1024]
        assert cfg.MODEL.CLIP.MODEL_NAME == "ViT-B-32" and not cfg.TEST.AUG.ENABLED
        # the official CE over the whole episode batch, nothing ignored: the pooled mean
        assert cfg.MODEL.LSEG.LOSS_NORMALIZATION == "pixels"
        return
    assert cfg.SOLVER.POLY_FORMULA == "ovseg"
    if path.stem == "lseg_vitl16_303k_bs16":  # the released run: a poly step per epoch, 240
        steps = lightning_steps_per_epoch(20210, gpus=8, batch=1, accumulate=2)
        assert (cfg.SOLVER.POLY_STEP_ITERS, cfg.SOLVER.MAX_ITER) == (steps, 240 * steps)
        # the encoding loader: long side 260-1040 (0.5-2 x the 520 base), 480 crops
        assert list(cfg.INPUT.RESIZE_IMG_SCALE) == [520, 520]
        assert list(cfg.INPUT.RESIZE_RATIO_RANGE) == [0.5, 2.0]
        assert tuple(cfg.INPUT.CROP.SIZE) == (480, 480) and cfg.INPUT.SIZE_DIVISIBILITY == 480
        # one image per GPU: each image's mean loss, then the mean over the images; two
        # forwards of 8 images per step of 16 (SyncBN over 8, --accumulate_grad_batches 2)
        assert cfg.MODEL.LSEG.LOSS_NORMALIZATION == "images"
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.ACCUMULATE_STEPS) == (16, 2)
    else:  # no official epoch (ovseg's splits, variants): the poly steps per iteration
        assert cfg.SOLVER.POLY_STEP_ITERS == 0 and cfg.SOLVER.ACCUMULATE_STEPS == 1
    if path.stem.endswith(VARIANT):  # ovseg's: backbone 0.004, decoder 10x, one test scale
        assert cfg.SOLVER.BASE_LR * cfg.SOLVER.BACKBONE_MULTIPLIER == pytest.approx(0.004)
        assert not cfg.TEST.AUG.ENABLED
        return
    # the released run: encoder (and reassemble) 0.004 / 16 * 1 per GPU, decoder 10x; CLIP
    # ViT-B/32 text; SyncBN; multi-scale + flip test, logits summed
    assert cfg.SOLVER.BASE_LR * cfg.SOLVER.BACKBONE_MULTIPLIER == pytest.approx(0.004 / 16)
    assert cfg.MODEL.CLIP.MODEL_NAME == "ViT-B-32" and cfg.MODEL.DPT.NORM == "SyncBN"
    aug = cfg.TEST.AUG
    assert aug.ENABLED and aug.FLIP and (aug.BASE_SIZE, aug.MERGE) == (520, "logits_sum")
    assert tuple(aug.SCALES) == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    if cfg.MODEL.BACKBONE.NAME == "build_torchvision_resnet_backbone":
        tv = cfg.MODEL.TORCHVISION_RESNET
        assert (tv.ARCH, tv.WEIGHTS, tv.NORM) == ("resnet101", "IMAGENET1K_V1", "SyncBN")
        assert list(cfg.MODEL.DPT.REASSEMBLE_CHANNELS) == []
    else:
        vit = cfg.MODEL.VIT_BACKBONE
        assert (vit.TIMM_MODEL, vit.TIMM_PRETRAINED, vit.POS_EMBED_INTERP) == (
            "vit_large_patch16_384",
            "orig_in21k_ft_in1k",
            "bilinear",
        )


ZEGCLIP_PROMPTS = {"voc": 10, "coco_stuff": 100, "pcontext": 100}
ZEGCLIP_COCO = CONFIGS / "coco_stuff/zegclip/zegclip_vitb16_inductive_80k_bs16.yaml"


def _zegclip_stage_source(path: Path, cfg) -> str:
    """The checkpoint a later stage must start from: the COCO-Stuff inductive run's final
    weights (cross-dataset evaluation); for self-training, the inductive run of the same
    kind (paper or variant): the official runs continue from its halfway checkpoint (which its
    CHECKPOINT_PERIOD must write), as the toy run does; ovseg's variants from its final weights."""
    if "eval" in path.stem:
        return os.path.join(_merged(ZEGCLIP_COCO).OUTPUT_DIR, "model_final.pth")
    variant = path.stem.endswith(VARIANT)
    (source,) = [
        p
        for p in path.parent.glob("zegclip_*_inductive_*.yaml")
        if p.stem.endswith(VARIANT) == variant
    ]
    first = _merged(source)
    if variant:
        return os.path.join(first.OUTPUT_DIR, "model_final.pth")
    half = first.SOLVER.MAX_ITER // 2
    assert cfg.SOLVER.MAX_ITER == half and half % first.SOLVER.CHECKPOINT_PERIOD == 0
    return os.path.join(first.OUTPUT_DIR, f"model_{half - 1:07d}.pth")


def _zegclip_recipe(path: Path, cfg) -> None:
    assert cfg.MODEL.BACKBONE.NAME == "build_clip_vit_prompted_backbone"
    evaluation = "eval" in path.stem
    if cfg.MODEL.OVSEG.SELF_TRAINING.START_ITER >= 0 or evaluation:
        # a later stage starts from the weights of the inductive run
        assert cfg.MODEL.WEIGHTS == _zegclip_stage_source(path, cfg)
        assert cfg.MODEL.ZEGCLIP.CALIBRATION == 0.0
    if _dataset(path) != "toy":  # the paper's recipe
        assert cfg.MODEL.CLIP.MODEL_NAME == "ViT-B-16" and cfg.MODEL.CLIP.PRETRAINED == "openai"
        source = "coco_stuff" if evaluation else _dataset(path)
        assert cfg.MODEL.ZEGCLIP.NUM_PROMPTS == ZEGCLIP_PROMPTS[source]
        assert cfg.MODEL.ZEGCLIP.DECODER_INIT == "official"  # what train.py leaves
        assert cfg.SOLVER.BASE_LR == pytest.approx(2e-5) and cfg.SOLVER.IMS_PER_BATCH == 16
        assert cfg.SOLVER.WARMUP_ITERS == 1500 and cfg.SOLVER.WEIGHT_DECAY == 0.01
        # the paper leaves: mmcv's poly to min_lr 1e-6 of every group's 2e-4 (zero:73-76);
        # ovseg's variants: ovseg's floored poly
        formula = "ovseg" if path.stem.endswith(VARIANT) else "mmcv"
        assert (cfg.SOLVER.POLY_FORMULA, cfg.SOLVER.POLY_STEP_ITERS) == (formula, 0)
        assert 2e-4 * cfg.SOLVER.POLY_LR_CONSTANT_ENDING == pytest.approx(1e-6)
        assert tuple(cfg.TEST.SLIDE_WINDOW) == (512, 512) and cfg.TEST.INFERENCE_MODE == "slide"


MASKCLIP_CLASSES = {"voc": 20, "pcontext": 59, "coco_stuff": 171, "ade20k": 150, "toy": 9}


def _maskclip_recipe(path: Path, cfg) -> None:
    assert cfg.TEST.INFERENCE_MODE == "whole"
    # no prompt denoising or key smoothing: the official configs behind MaskCLIP's headline
    # numbers never set them, and the toy images are too small for them to help
    assert (cfg.MODEL.MASKCLIP.PROMPT_DENOISE, cfg.MODEL.MASKCLIP.KEY_SMOOTHING) == (False, False)
    if _dataset(path) != "toy":
        assert cfg.MODEL.CLIP.MODEL_NAME == ("RN50" if "rn50" in path.name else "ViT-B-16")
        assert cfg.MODEL.CLIP.PRETRAINED == "openai" and cfg.MODEL.CLIP.TEMPLATES == "maskclip85"


# the official schedules: teacher labels, then self-training from the official 1-based
# 2,000th (4,000th, 8,000th) iteration, detectron2's 1,999 (annotation-free: teacher only)
MASKCLIP_PLUS_SCHEDULES = {
    ("voc", "transductive"): (1999, 20000),
    ("pcontext", "transductive"): (3999, 40000),
    ("coco_stuff", "transductive"): (7999, 80000),
    ("voc", "annofree"): (-1, 2000),
    ("pcontext", "annofree"): (-1, 4000),
    ("coco_stuff", "annofree"): (-1, 8000),
}
# kind -> (teacher CLIP, student ResNet depth, zero-shot setting, pixels the teacher labels):
# the official runs label the pixels of unseen ground truth (of any class, annotation-free),
# ovseg's variants the ignored pixels of the transductive mapping
MASKCLIP_PLUS_RUNS = {
    "transductive": ("RN50", 101, "none", "unseen"),
    "annofree": ("ViT-B-16", 50, "none", "unseen"),
    "transductive" + VARIANT: ("ViT-B-16", 101, "transductive", "ignore"),
}


def _maskclip_plus_recipe(path: Path, cfg) -> None:
    if _dataset(path) == "toy":
        return
    mc = cfg.MODEL.MASKCLIP_PLUS
    kind = "annofree" if mc.ANNOTATION_FREE else "transductive"
    schedule = MASKCLIP_PLUS_SCHEDULES[(_dataset(path), kind)]
    assert (cfg.MODEL.OVSEG.SELF_TRAINING.START_ITER, cfg.SOLVER.MAX_ITER) == schedule
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.OPTIMIZER == "SGD"
    assert cfg.MODEL.CLIP.PRETRAINED == "openai"
    # the paper leaves: mmcv's poly to min_lr 1e-4 (schedule_*k.py:5), no warm-up; ovseg's
    # variants: ovseg's floored poly
    formula = "ovseg" if path.stem.endswith(VARIANT) else "mmcv"
    assert (cfg.SOLVER.POLY_FORMULA, cfg.SOLVER.POLY_STEP_ITERS) == (formula, 0)
    assert cfg.SOLVER.BASE_LR * cfg.SOLVER.POLY_LR_CONSTANT_ENDING == pytest.approx(1e-4)
    assert cfg.SOLVER.WARMUP_ITERS == 0
    run = MASKCLIP_PLUS_RUNS[kind + (VARIANT if path.stem.endswith(VARIANT) else "")]
    setting = cfg.MODEL.OVSEG.ZERO_SHOT_SETTING
    assert (
        cfg.MODEL.CLIP.MODEL_NAME,
        cfg.MODEL.RESNETS.DEPTH,
        setting,
        mc.PSEUDO_LABEL_PIXELS,
    ) == run


def _baseline_recipe(path: Path, cfg) -> None:
    # closed vocabulary: one output per class of its training set
    classes = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).stuff_classes
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == len(classes) == 150
    assert cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 255


# per dataset: lr = wd, iterations, crop, test short side, training tasks' mapper
FREESEG_RUNS = {
    "coco": (1.5e-4, 60000, 640, 640, "ovseg_panoptic"),
    "voc": (2e-5, 20000, 512, 512, "ovseg_semantic_mask"),
    "ade20k": (1e-4, 60000, 512, 512, "ovseg_panoptic"),
}
FREESEG_RUNS["coco_stuff"] = FREESEG_RUNS["coco"]  # the COCO model, evaluated on COCO-Stuff
# per dataset: regions per class and task, weight decay, iterations, tasks' mapper
FREESEG_PROMPT_RUNS = {
    "coco": (64, 0.001, 16000, "coco_2017_val_stuff_sem_seg_regions"),
    "voc": (128, 0.001, 3200, "voc_sem_seg_val_regions"),
    "ade20k": (32, 0.0005, 16000, "ade20k_sem_seg_val_regions"),
}


def _freeseg_recipe(path: Path, cfg) -> None:
    assert cfg.TEST.INFERENCE_MODE == "whole"
    if _dataset(path) == "toy":  # all three tasks on the toy world's panoptic data
        assert cfg.INPUT.DATASET_MAPPER_NAME == "ovseg_panoptic"
        assert cfg.DATASETS.TRAIN == ("toy_world_panoptic_train",)
        assert cfg.DATASETS.TEST == ("toy_world_panoptic_val",)
        assert train_tasks_for(cfg) == ("semantic", "instance", "panoptic")
        return
    # R101c, 100 queries, 10 layers; AdamW (norms, embeddings wd 0), backbone x0.1, poly 0.9,
    # full-model clip 0.01, batch 32; lr, iterations and sizes per dataset
    res, mf, s = cfg.MODEL.RESNETS, cfg.MODEL.MASK_FORMER, cfg.SOLVER
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_deeplab_backbone"
    assert (res.DEPTH, res.STEM_TYPE, res.STEM_OUT_CHANNELS) == (101, "deeplab", 128)
    assert list(res.RES5_MULTI_GRID) == [1, 2, 4]
    assert (mf.NUM_OBJECT_QUERIES, mf.DEC_LAYERS, mf.NUM_AUX_LOSSES) == (100, 10, 9)
    lr, iters, crop, test_size, mapper = FREESEG_RUNS[_dataset(path)]
    assert (s.OPTIMIZER, s.BASE_LR, s.WEIGHT_DECAY) == ("ADAMW", lr, lr)
    assert (s.WEIGHT_DECAY_NORM, s.WEIGHT_DECAY_EMBED, s.BACKBONE_MULTIPLIER) == (0.0, 0.0, 0.1)
    assert (s.LR_SCHEDULER_NAME, s.POLY_LR_POWER) == ("WarmupPolyLR", 0.9)
    clip = s.CLIP_GRADIENTS
    assert clip.ENABLED and (clip.CLIP_TYPE, clip.CLIP_VALUE) == ("full_model", 0.01)
    assert (s.IMS_PER_BATCH, s.MAX_ITER) == (32, iters)
    assert tuple(cfg.INPUT.CROP.SIZE) == (crop, crop) and cfg.INPUT.MIN_SIZE_TEST == test_size
    assert cfg.INPUT.DATASET_MAPPER_NAME == mapper
    assert cfg.MODEL.FREESEG.ENSEMBLE_WEIGHT == 0.8 and not cfg.MODEL.FREESEG.PROMPT_CHECKPOINT
    assert cfg.MODEL.CLIP.MODEL_NAME == "ViT-B-16" and cfg.MODEL.CLIP.PRETRAINED == "openai"
    # the all-task runs' semantic masks come from the label maps (the VOC leaves train on
    # semantic sets, whose masks are the label maps' either way)
    labels = mapper == "ovseg_panoptic"
    assert cfg.MODEL.FREESEG.SEMANTIC_TARGETS == ("sem_seg" if labels else "segments")


def _freeseg_prompt_recipe(path: Path, cfg) -> None:
    # SGD 0.02, cosine after a constant 0.005 warm-up of 100, batch 32, full-model clip 0.01
    s, fs = cfg.SOLVER, cfg.MODEL.FREESEG
    assert (s.OPTIMIZER, s.BASE_LR, s.LR_SCHEDULER_NAME) == ("SGD", 0.02, "WarmupCosineLR")
    assert (s.WARMUP_METHOD, s.WARMUP_FACTOR, s.WARMUP_ITERS) == ("constant", 0.005, 100)
    assert s.CLIP_GRADIENTS.ENABLED and s.CLIP_GRADIENTS.CLIP_VALUE == 0.01
    per_class, wd, iters, test = FREESEG_PROMPT_RUNS[_dataset(path)]
    assert (fs.PROMPT_SAMPLES_PER_CLASS, s.WEIGHT_DECAY, s.MAX_ITER) == (per_class, wd, iters)
    # the prompt tokens are plain parameters there, decayed like any (train_net.py:262-277);
    # here "prompt" names decay SOLVER.WEIGHT_DECAY_EMBED (ovseg/engine/solver.py)
    assert s.WEIGHT_DECAY_EMBED == wd
    assert s.IMS_PER_BATCH == 32 and cfg.INPUT.DATASET_MAPPER_NAME == "ovseg_region"
    # the region crop: box x1.0, random resized 244x224 + flip; test: the 224 centre, region
    # classification of every class region of the val split
    assert fs.MASK_EXPAND_RATIO == 1.0 and tuple(fs.PROMPT_TRAIN_SIZE) == (244, 224)
    assert fs.PROMPT_TEST_SIZE == 224 and cfg.DATASETS.TEST == (test,)
    # CLIP embeds the crop at its own size (third_party/CLIP/clip/model.py:343-360)
    assert fs.PROMPT_NATIVE_SIZE
    # regions of the label maps; ADE20K's official set is semantic only
    # (register_ade20k_all_data.py:377-382), COCO's has all three tasks
    tasks = {"ade20k": ["semantic"], "coco": [], "voc": []}[_dataset(path)]
    assert list(fs.TRAIN_TASKS) == tasks
    assert fs.SEMANTIC_TARGETS == ("segments" if _dataset(path) == "voc" else "sem_seg")
    assert MetadataCatalog.get(test).evaluator_type == "ovseg_region_classification"
    assert not cfg.INPUT.CROP.ENABLED and not cfg.MODEL.WEIGHTS
    assert (fs.NUM_CLASS_PROMPT_TOKENS, fs.NUM_TASK_PROMPT_TOKENS) == (16, 8)
    assert cfg.MODEL.CLIP.MODEL_NAME == "ViT-B-16" and cfg.MODEL.CLIP.PRETRAINED == "openai"


# XPM leaves that evaluate an official checkpoint, converted (ovseg/convert/xpm.py)
XPM_OFFICIAL = "_official-checkpoint_eval"


def _xpm_teacher_leaf(path: Path) -> Path:
    """The teacher leaf a student's ``_BASE_`` chain passes through (the nearest)."""
    return next(
        p
        for p in _chain(path)[1:]
        if not p.name.startswith("Base-") and _merged(p).MODEL.META_ARCHITECTURE == "XPMTeacher"
    )


def _xpm_official_recipe(path: Path, cfg) -> None:
    """A leaf evaluating an official XPM checkpoint: the release's settings (those the
    converter compares with), the checkpoint its header's convert command writes, evaluated
    by its header's command without overrides, into an output folder of its own."""
    res, xpm = cfg.MODEL.RESNETS, cfg.MODEL.XPM
    assert xpm.CLASS_EMBEDDING == "bert" and xpm.LEGACY_BOXES
    assert res.STRIDE_IN_1X1 and res.NORM == "FrozenBN"
    assert tuple(cfg.MODEL.PIXEL_MEAN) == OFFICIAL_PIXEL_MEAN
    assert tuple(cfg.MODEL.PIXEL_STD) == OFFICIAL_PIXEL_STD
    if cfg.MODEL.META_ARCHITECTURE == "XPMStudent":  # the release holds the heads it evaluates
        assert xpm.TEACHER_WEIGHTS == ""
    commands = header_commands(path)
    (convert,) = [c for c in commands if c[1] == "tools/convert_checkpoint.py"]
    (evaluate,) = [c for c in commands if c[1] == "train_net.py"]
    assert convert[convert.index("--method") + 1] == "xpm"
    assert convert[convert.index("--output") + 1] == cfg.MODEL.WEIGHTS
    here = path.relative_to(ROOT).as_posix()
    assert convert[convert.index("--config-file") + 1] == here
    assert evaluate[2:] == ["--eval-only", "--config-file", here]
    assert cfg.OUTPUT_DIR not in {_merged(p).OUTPUT_DIR for p in _chain(path)[1:]}


def _xpm_paper_recipe(path: Path, cfg) -> None:
    """A leaf training the paper's run: the release's settings from OVR-CNN's pre-training
    (the teacher: its convert command writes MODEL.WEIGHTS from this leaf, then trains it)."""
    res, xpm = cfg.MODEL.RESNETS, cfg.MODEL.XPM
    assert xpm.LEGACY_BOXES and res.STRIDE_IN_1X1 and res.NORM == "FrozenBN"
    assert tuple(cfg.MODEL.PIXEL_MEAN) == OFFICIAL_PIXEL_MEAN
    assert tuple(cfg.MODEL.PIXEL_STD) == OFFICIAL_PIXEL_STD
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2  # FREEZE_CONV_BODY_AT 2: stem and res2
    if cfg.MODEL.META_ARCHITECTURE == "XPMStudent":  # FREEZE_EMB_PRED False
        assert not xpm.FREEZE_PROJECTION
        # pseudo-labels as the official: caption nouns in the teacher's BERT space, matched
        # to its raw region embeddings (st_generalized_rcnn.py:202-209, 226-255); no CLIP
        assert (xpm.CLASS_EMBEDDING, xpm.REGION_EMBEDDING, xpm.PSEUDO_TEXT) == (
            "bert", "teacher", "noun",
        )  # fmt: skip
        assert xpm.PSEUDO_MASK_THRESHOLD == 0.5 and xpm.PSEUDO_SCORE_THRESHOLD == 0.0
        assert xpm.TEACHER_META_ARCHITECTURE == "XPMTeacher"
        assert cfg.MODEL.CLIP.PRETRAINED == ""
        return
    assert xpm.FREEZE_PROJECTION  # FREEZE_EMB_PRED True
    assert xpm.MASK_PREDICTOR_STD == 1.0  # the mask head starts as the release's
    commands = header_commands(path)
    (convert,) = [c for c in commands if c[1] == "tools/convert_checkpoint.py"]
    (train,) = [c for c in commands if c[1] == "train_net.py"]
    assert convert[convert.index("--method") + 1] == "ovrcnn"
    assert convert[convert.index("--output") + 1] == cfg.MODEL.WEIGHTS
    here = path.relative_to(ROOT).as_posix()
    assert convert[convert.index("--config-file") + 1] == here
    # 8 processes of one image, as the official 8 GPUs: its mask loss is each image's mean
    assert train[2:] == ["--num-gpus", "8", "--config-file", here]


def _xpm_recipe(path: Path, cfg) -> None:
    assert cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION == 1.0
    assert (cfg.MODEL.XPM.BACKGROUND_WEIGHT, cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA) == (0.2, 1.0)
    student = cfg.MODEL.META_ARCHITECTURE == "XPMStudent"
    official = path.stem.endswith(XPM_OFFICIAL)
    # BERT classes: the official weights, or the paper's run (named *_bert_*)
    paper = "_bert_" in path.stem and not official
    bert = cfg.MODEL.XPM.CLASS_EMBEDDING == "bert"
    assert bert == (official or paper), "bert is for official weights and the paper's run"
    if paper:
        _xpm_paper_recipe(path, cfg)
    if official:
        _xpm_official_recipe(path, cfg)
    elif student:  # starts from the final weights of the teacher leaf it chains from
        want = os.path.join(_merged(_xpm_teacher_leaf(path)).OUTPUT_DIR, "model_final.pth")
        assert cfg.MODEL.XPM.TEACHER_WEIGHTS == want and cfg.MODEL.WEIGHTS == ""
    if student:
        assert cfg.MODEL.OVSEG.ZERO_SHOT_SETTING == "transductive"
        assert not cfg.MODEL.XPM.PSEUDO_BOX_REG and cfg.MODEL.XPM.PSEUDO_LOSS_SCALE == 0.01
        # it trains on caption pseudo instances through XPM's mapper: the paper's run makes
        # them online as officially, the others read a store; evaluation makes none
        assert cfg.INPUT.DATASET_MAPPER_NAME == "ovseg_xpm_instance"
        source = "online" if paper else "store"
        assert cfg.MODEL.XPM.PSEUDO_LABEL_SOURCE == source
        assert bool(cfg.DATASETS.PSEUDO_LABELS) == (source == "store" and not official)
    else:  # its training set shows no unseen class: the setting removes them or has none
        unseen = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("unseen_classes", None)
        want = "inductive" if unseen else "none"
        assert cfg.MODEL.OVSEG.ZERO_SHOT_SETTING == want
    if _dataset(path) == "toy":  # the toy CLIP names regions by pooling (measured)
        assert cfg.MODEL.XPM.REGION_EMBEDDING == "pool"
        assert cfg.MODEL.XPM.CAPTION_VOCABULARY == "train"  # its own shapes' names
        return
    if student:  # caption nouns of the 1203 LVIS categories, id 0 the pseudo background
        assert cfg.MODEL.XPM.CAPTION_VOCABULARY == "lvis" and cfg.MODEL.XPM.LVIS_BACKGROUND_QUIRK
    # R-50-C4, class-agnostic, SGD; teacher 5e-4 for 90k (60k/80k), student 5e-3 for 70k
    # (20k/50k) with the noise head learning until 10k; batch 8
    res, s = cfg.MODEL.RESNETS, cfg.SOLVER
    assert (res.DEPTH, tuple(cfg.MODEL.ROI_HEADS.IN_FEATURES)) == (50, ("res4",))
    assert (s.OPTIMIZER, s.LR_SCHEDULER_NAME, s.IMS_PER_BATCH) == ("SGD", "WarmupMultiStepLR", 8)
    schedule = (s.BASE_LR, tuple(s.STEPS), s.MAX_ITER)
    if student:
        assert schedule == (0.005, (20000, 50000), 70000)
        assert cfg.MODEL.XPM.NOISE_FREEZE_ITER == 10000
    else:
        assert schedule == (0.0005, (60000, 80000), 90000)
    # biases at 2x lr, no decay (maskrcnn_benchmark defaults.py:494, 499); the RPN's box loss
    # smooth-L1 1/9 with border-crossing anchors ignored (rpn/loss.py:123, defaults.py:227)
    assert (s.BIAS_LR_FACTOR, s.WEIGHT_DECAY_BIAS, s.WEIGHT_DECAY) == (2.0, 0.0, 1e-4)
    rpn = cfg.MODEL.RPN
    assert (rpn.SMOOTH_L1_BETA, rpn.BOUNDARY_THRESH) == (pytest.approx(1 / 9), 0)
    # XPM's three evaluation sets: unseen-only, seen-only, generalized (zeroshot_mask.yaml:40)
    split = cfg.DATASETS.TRAIN[0].replace("_train_", "_val_")
    assert cfg.DATASETS.TEST == (f"{split}_unseen", f"{split}_seen", split)
    # CLIP weights are read for CLIP classes only (BERT classes label in BERT's space)
    want_clip = "" if bert else "openai"
    assert cfg.MODEL.CLIP.MODEL_NAME == "ViT-B-16" and cfg.MODEL.CLIP.PRETRAINED == want_clip


RECIPES = {
    "XPMTeacher": _xpm_recipe,
    "XPMStudent": _xpm_recipe,
    "FreeSeg": _freeseg_recipe,
    "FreeSegPromptLearner": _freeseg_prompt_recipe,
    "LSeg": _lseg_recipe,
    "ZegCLIP": _zegclip_recipe,
    "MaskCLIP": _maskclip_recipe,
    "MaskCLIPPlus": _maskclip_plus_recipe,
    "SemanticSegmentor": _baseline_recipe,
}


# ---------------------------------------------------------------- one step at a tiny size
# the parameters a training step must change
LEARNERS = {
    "FreeSeg": lambda model: list(model.decoder.parameters()),
    "FreeSegPromptLearner": lambda model: [model.prompt.class_context, model.prompt.task_context],
    "LSeg": lambda model: list(model.decoder.parameters()),
    "ZegCLIP": lambda model: [model.backbone.prompts],
    "MaskCLIPPlus": lambda model: list(model.head.parameters()),
    "SemanticSegmentor": lambda model: list(model.sem_seg_head.parameters()),
    "XPMTeacher": lambda model: list(model.roi_heads.parameters()),
    "XPMStudent": lambda model: list(model.roi_heads.parameters()),
}


def _panoptic_training(cfg) -> bool:
    """Whether ``cfg`` trains on panoptic targets: the panoptic mapper, or the region mapper
    on a panoptic set (FreeSeg's prompt stage on COCO and ADE20K)."""
    mapper = cfg.INPUT.DATASET_MAPPER_NAME
    if mapper == "ovseg_region" and cfg.DATASETS.TRAIN:
        return MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("evaluator_type") == "ovseg_panoptic"
    return mapper == "ovseg_panoptic"


def _small_cfg(path: Path, cfg, cache: Path, *extra: str):
    """``path`` at CPU size: the tiny CLIP of its tower and, for a leaf that trains, the ADE
    fixture (the toy world where the leaf learns a "background" embedding, which ADE20K's
    classes lack); a toy leaf keeps its toy CLIP and toy world; then ``extra`` overrides."""
    arch = cfg.MODEL.META_ARCHITECTURE
    opts = cpu_opts(arch, cache)
    if _dataset(path) != "toy":
        opts += tiny_clip_opts(cfg.MODEL.CLIP.MODEL_NAME)
        if cfg.INPUT.DATASET_MAPPER_NAME == "ovseg_binary_episode":  # its own fold fixture
            opts += ["INPUT.EPISODE.IMAGE_SIZE", "(64, 64)"]
        elif _panoptic_training(cfg):  # the tiny COCO-layout set
            opts += PANOPTIC_OPTS
        elif arch.startswith("XPM"):  # instance targets: that set's instance split
            opts += INSTANCE_OPTS
            if arch == "XPMTeacher" and cfg.MODEL.OVSEG.ZERO_SHOT_SETTING == "none":
                # the real training split holds seen classes only; the fixture's unseen
                # ones are removed to stand in for it
                opts += ["MODEL.OVSEG.ZERO_SHOT_SETTING", "inductive"]
        elif arch in LEARNERS:
            opts += TOY_WORLD_OPTS if cfg.MODEL.OVSEG.BG_EMBED else ADE20K_OPTS
    return load_config(str(path), [*opts, *extra])


def _check_learning_rates(cfg, model, optimizer) -> None:
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "LSeg":  # the decoder at 1 / BACKBONE_MULTIPLIER times the backbone's lr
        decoder, backbone = model.decoder.head.weight, next(model.backbone.parameters())
        ratio = lrs[id(decoder)] / lrs[id(backbone)]
        assert ratio == pytest.approx(1 / cfg.SOLVER.BACKBONE_MULTIPLIER)
        # the reassemble layers: the backbone's lr as official, the decoder's in variants
        reassemble = [p for p in model.decoder.reassemble.parameters()]
        want = lrs[id(backbone)] if cfg.SOLVER.LR_MULTIPLIER_KEYS else lrs[id(decoder)]
        assert all(lrs[id(p)] == pytest.approx(want) for p in reassemble)
    if arch == "ZegCLIP":  # x10 on prompts (backbone) and decoder: one lr for every parameter
        want = cfg.SOLVER.BASE_LR * 10
        assert {round(lr / want, 6) for lr in lrs.values()} == {1.0}
        assert len(lrs) == sum(p.requires_grad for p in model.parameters())


def _fill_store(root: Path, cfg) -> str:
    """A store for the training set's images over the classes ``cfg`` scores, made by the
    teacher ``cfg`` describes (training refuses another teacher's)."""
    names = scored_names(cfg)
    threshold = cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD
    teacher = expected_teacher(cfg, "MaskCLIP")
    store = make_store(
        root, names, threshold=threshold, dataset=cfg.DATASETS.TRAIN[0], teacher=teacher
    )
    for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0]):  # 64x64 images, as the fixtures'
        store.write(d["image_id"], np.full((64, 64), len(names) - 1), np.ones((64, 64)))
    return str(root)


def _fill_instance_store(root: Path, cfg) -> str:
    """An XPM instance store for the training set's images over the config's pseudo-label
    vocabulary (the training one, or the LVIS names): per image one pseudo instance of the
    last unseen class (else the last class), its mask the image's left half."""
    from ovseg.data.captions.settings import matches_in_bert_space, xpm_store_vocabulary
    from ovseg.pseudo import InstancePseudoLabelStore
    from ovseg.pseudo.instances import encode_mask
    from ovseg.pseudo.store import image_id_of

    dataset = cfg.DATASETS.TRAIN[0]
    vocab, extra = xpm_store_vocabulary(cfg, dataset)
    name = (vocab.unseen or vocab.names)[-1]
    # the labeller settings say which space the nouns were matched in, as a made store's do
    space = {"xpm": {"text_space": {"bert": "b" * 64, "product": "dot"}}}
    settings = space if matches_in_bert_space(cfg) else {}
    manifest = {"fingerprint": "f" * 64, "teacher": {"clip": "c" * 64, "settings": settings}}
    store = InstancePseudoLabelStore.create(
        str(root),
        {**manifest, "vocabulary": list(vocab.names), "unseen": list(vocab.unseen)}
        | {"threshold": 0.0, "dataset": dataset, **extra},
    )
    for d in DatasetCatalog.get(dataset):
        h, w = d["height"], d["width"]
        mask = np.zeros((h, w), bool)
        mask[:, : max(w // 2, 1)] = True
        inst = {"noun": name, "category": name, "category_id": list(vocab.names).index(name)}
        inst |= {"box": [0, 0, max(w // 2, 1), h], "mask": encode_mask(mask)}
        inst |= {"cosine": 0.3, "score": 0.57, "proposal": 0}
        store.write(image_id_of(d), {"height": h, "width": w, "instances": [inst]})
    store.finalize()
    return str(root)


def _one_training_step(cfg, learner) -> None:
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    _check_learning_rates(cfg, model, optimizer)
    batch = next(iter(Trainer.build_train_loader(cfg)))
    # SOLVER.IMS_PER_BATCH 2 per step, in ACCUMULATE_STEPS loader batches
    assert len(batch) * cfg.SOLVER.ACCUMULATE_STEPS == 2
    if cfg.MODEL.META_ARCHITECTURE == "XPMStudent":  # the store's instances reach the model
        assert any(x["instances"].gt_is_pseudo.any() for x in batch)
    model.train()
    before = [p.detach().clone() for p in learner(model)]
    with EventStorage(start_iter=0):  # as a trainer: self-training reads the iteration
        losses = model(batch)
    loss = sum(losses.values())
    assert torch.isfinite(loss) and loss > 0
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, learner(model)))


def _evaluates(cfg) -> None:
    """``train_net.py --eval-only``'s evaluation of ``cfg`` (random weights) on its one test
    set (the instance fixture): mask AP, seen and unseen."""
    assert len(cfg.DATASETS.TEST) == 1  # detectron2 returns one set's results unnested
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    results = Trainer.test(cfg, model)
    assert {"AP", "AP-seen", "AP-unseen"} <= set(results["segm"]), results


def _maskclip_builds(path: Path, cfg, shipped_clip: str) -> None:
    model = Trainer.build_model(cfg)
    assert model.teacher.tower == ("resnet" if is_resnet_clip(shipped_clip) else "vit")
    assert len(model.vocabulary) == MASKCLIP_CLASSES[_dataset(path)]
    assert list(model.vocabulary) == MetadataCatalog.get(cfg.DATASETS.TEST[0]).stuff_classes
    assert len(model.templates) == (1 if _dataset(path) == "toy" else 85)


@pytest.fixture(scope="module")
def toy_fixture(tmp_path_factory):
    with registered_toy_world(tmp_path_factory.mktemp("toy_datasets")) as root:
        yield root


@pytest.fixture(scope="module")
def fewshot_fixture(tmp_path_factory):
    with registered_fewshot(tmp_path_factory.mktemp("fewshot_datasets")) as root:
        yield root


@pytest.fixture(scope="module")
def panoptic_fixture(tmp_path_factory):
    # with its label folder: FreeSeg's COCO and ADE20K leaves read the semantic task's masks
    # from the label maps (MODEL.FREESEG.SEMANTIC_TARGETS "sem_seg")
    root = tmp_path_factory.mktemp("panoptic_datasets")
    with registered_tiny_panoptic(root, sem_seg=True) as coco:
        yield coco


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """MODEL.XPM.BERT_NAME for official-checkpoint leaves (skips without transformers)."""
    require_transformers()
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory):
    # shared: a seeded CLIP has one fingerprint, so its text embeddings are computed once
    return tmp_path_factory.mktemp("clip_cache")


@pytest.mark.parametrize("path", LEAVES, ids=_rel)
def test_leaf_recipe_and_one_step(
    path,
    small_ade20k,
    toy_fixture,
    fewshot_fixture,
    panoptic_fixture,
    clip_cache,
    tmp_path,
    monkeypatch,
    request,
):
    monkeypatch.chdir(ROOT)  # configs name files relative to the repository root
    cfg = _merged(path)
    arch = cfg.MODEL.META_ARCHITECTURE
    folder = _folder(path)
    archs = (FOLDERS.get(folder), *MORE_ARCHS.get(folder, ()))
    assert arch in archs, f"{_rel(path)} ({arch}) sits with {folder}"
    RECIPES[arch](path, cfg)

    shipped_clip = cfg.MODEL.CLIP.MODEL_NAME
    extra = []
    if cfg.MODEL.XPM.CLASS_EMBEDDING == "bert":  # a tiny BERT for bert-base-uncased
        extra = ["MODEL.XPM.BERT_NAME", request.getfixturevalue("tiny_bert")]
    # outputs (an evaluation's predictions) in tmp_path, never in the repository's output/
    cfg = _small_cfg(path, cfg, clip_cache, *extra, "OUTPUT_DIR", str(tmp_path / "output"))
    if path.stem.endswith(XPM_OFFICIAL):  # evaluation only
        _evaluates(cfg)
        return
    if arch == "MaskCLIP":
        _maskclip_builds(path, cfg, shipped_clip)
        return
    if arch == "MaskCLIPPlus" and cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE == "store":
        cfg.DATASETS.PSEUDO_LABELS = _fill_store(tmp_path / "store", cfg)
    if arch == "XPMStudent":  # the shipped store does not exist yet: a filled one
        # (the instance fixture has no captions to label online: the online leaf trains end
        # to end in tests/engine/test_xpm_paper_pipeline.py)
        cfg.MODEL.XPM.PSEUDO_LABEL_SOURCE = "store"
        cfg.DATASETS.PSEUDO_LABELS = _fill_instance_store(tmp_path / "store", cfg)
    _one_training_step(cfg, LEARNERS[arch])


# ---------------------------------------------------------------- method-specific checks
def test_fss_leaf_evaluates_every_test_episode(fewshot_fixture, clip_cache, tmp_path, monkeypatch):
    """``train_net.py --eval-only`` of the FSS-1000 leaf (random weights, the fixture's one image
    per class): HSNet's mIoU and FB-IoU over the 240 test classes, every episode scored."""
    monkeypatch.chdir(ROOT)
    path = CONFIGS / "fss1000/lseg/lseg_vitl16_200ep_bs40.yaml"
    cfg = _small_cfg(path, _merged(path), clip_cache, "OUTPUT_DIR", str(tmp_path))
    torch.manual_seed(0)
    results = Trainer.test(cfg, Trainer.build_model(cfg))["fewshot"]
    assert 0 <= results["mIoU"] <= 100 and 0 <= results["FB-IoU"] <= 100
    assert len([k for k in results if k.startswith("IoU-")]) == 240
    saved = json.loads((tmp_path / "inference" / "fewshot_evaluation.json").read_text())
    assert saved["episodes"] == 240 and saved["metrics"]["mIoU"] == results["mIoU"]


def test_every_dataset_ships_both_maskclip_configs():
    names = {(_dataset(p), p.name) for p in LEAVES if p.parent.name == "maskclip"}
    datasets = set(MASKCLIP_CLASSES) - {"toy"}
    assert names == {
        (d, f"maskclip_{clip}_bs1.yaml") for d in datasets for clip in ("vitb16", "rn50")
    }


def test_zegclip_vitb16_voc_learnable_parameter_count(tmp_path):
    cfg = load_config(
        str(CONFIGS / "voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml"),
        ["MODEL.DEVICE", "cpu", "MODEL.CLIP.PRETRAINED", "", "MODEL.CLIP.CACHE_DIR", str(tmp_path)],
    )
    model = Trainer.build_model(cfg)

    def count(module):
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    width, dim, blocks, prompts = 768, 512, 12, 10
    # deep prompts of every block, their projection, the output norm
    assert count(model.backbone) == blocks * prompts * width + width * width + width + 2 * width
    # relationship descriptor; two full layers (4 attention projections, 2 norms, FFN 4x);
    # the last layer's query and key projections
    layer = 4 * (dim * dim + dim) + 2 * 2 * dim + 2 * dim * 4 * dim + 4 * dim + dim
    assert count(model.decoder) == (2 * dim * dim + dim) + 2 * layer + 2 * (dim * dim + dim)
    # 8.04M receive gradients; the official model's 13.8M ("~14M") also count 5.78M
    # parameters it never uses (self-attention in each layer, the last layer's tail)
    assert count(model) == 8_039_168


def test_toy_base_maps_a_training_sample_with_unseen_ignored(toy_fixture):
    cfg = load_config(str(CONFIGS / "toy/Base-toy.yaml"))
    mapper = build_dataset_mapper(cfg, is_train=True)
    seen = [c for c in toy_world.CLASSES if c not in ("triangle", "ring")]
    for d in DatasetCatalog.get("toy_world_sem_seg_train"):
        label = np.asarray(Image.open(d["sem_seg_file_name"]))
        out = mapper(dict(d))
        assert out["image"].shape == (3, 64, 64)
        assert out["vocabulary"] == seen
        unseen_pixels = np.isin(label, [3, 5]).sum()  # triangle, ring
        assert int((out["sem_seg"] == 255).sum()) == unseen_pixels


def test_freeseg_leaves_train_on_the_seen_names_only():
    # the release's training sets name only their seen classes (SEM_SEG_HEAD.NUM_CLASSES
    # 156 / 135 / 15): unseen names are no negatives of the class head or the prompt CE
    seen = {"coco": 156, "coco_stuff": 156, "ade20k": 135, "voc": 15}
    leaves = sorted(CONFIGS.glob("*/freeseg/*.yaml"))
    assert {_dataset(p) for p in leaves} == set(seen)
    for path in leaves:
        vocab = training_vocabulary(_merged(path))
        assert len(vocab.names) == seen[_dataset(path)] and not vocab.unseen, _rel(path)
    # VOC's prompts take the official names (register_voc_seg.py:8-29)
    official = {"diningtable", "pottedplant", "tvmonitor"}
    for path in sorted(CONFIGS.glob("voc/freeseg/*.yaml")):
        names = _merged(path).MODEL.CLIP.PROMPT_NAMES
        assert set(get_prompt_names(names).values()) == official, _rel(path)


def test_freeseg_coco_semantic_row_is_the_all_task_model_on_coco_stuff():
    """The paper's COCO semantic numbers (156 / 15) are the all-task model's on COCO-Stuff val
    with the semantic prompts only (the release's separate ``_test_semseg`` config), not the
    all-task leaf's mIoU over COCO panoptic's 133 classes (11 unseen)."""
    cfg = _merged(CONFIGS / "coco_stuff/freeseg/freeseg_r101c_coco-alltask_eval.yaml")
    source = _merged(CONFIGS / "coco/freeseg/freeseg_r101c_alltask_60k_bs32.yaml")
    assert cfg.MODEL.WEIGHTS == os.path.join(source.OUTPUT_DIR, "model_final.pth")
    assert cfg.OUTPUT_DIR != source.OUTPUT_DIR
    # (the module's test_tasks_for, not imported by name: pytest would collect it)
    assert freeseg_tasks.test_tasks_for(source) == ("semantic", "instance", "panoptic")
    assert freeseg_tasks.test_tasks_for(cfg) == ("semantic",)
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    assert (len(meta.stuff_classes), len(meta.unseen_classes)) == (171, 15)
    # the test-time ensemble weights the 156 seen names as seen, the 15 unseen as unseen
    seen = set(ensemble_seen_classes(cfg)) & set(meta.stuff_classes)
    assert seen == set(meta.seen_classes) and len(seen) == 156
