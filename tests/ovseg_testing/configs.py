"""Shrinking a shipped config to a CPU test: KEY VALUE overrides per meta-architecture, the
tiny CLIP of the same tower, the splits of the fixture ADE20K or of a toy world."""

from __future__ import annotations

import shlex
from pathlib import Path

from ovseg_testing.paths import TINY_RN, TINY_VIT

CPU_OPTS = [
    "MODEL.DEVICE", "cpu",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "INPUT.COLOR_AUG_SSD", "False",
]  # fmt: skip
ADE20K_OPTS = [
    "DATASETS.TRAIN", '("ade20k_sem_seg_train",)',
    "DATASETS.TEST", '("ade20k_sem_seg_val",)',
]  # fmt: skip
# the tiny COCO-layout panoptic fixture (tests/ovseg_testing/panoptic.py)
PANOPTIC_OPTS = [
    "DATASETS.TRAIN", '("tiny_panoptic_test",)',
    "DATASETS.TEST", '("tiny_panoptic_test",)',
]  # fmt: skip
# the tiny instance split of the panoptic fixture (cat seen, dog unseen; sky is stuff)
INSTANCE_OPTS = [
    "DATASETS.TRAIN", '("tiny_instance_test",)',
    "DATASETS.TEST", '("tiny_instance_test",)',
]  # fmt: skip
# the toy world's splits: its classes include "background", for configs with a learnable one
TOY_WORLD_OPTS = [
    "DATASETS.TRAIN", '("toy_world_sem_seg_train",)',
    "DATASETS.TEST", '("toy_world_sem_seg_val",)',
]  # fmt: skip
_CROP_64 = ["INPUT.CROP.SIZE", "(64, 64)", "INPUT.SIZE_DIVISIBILITY", "64"]
_SLIDE_64 = ["TEST.SLIDE_WINDOW", "(64, 64)", "TEST.SLIDE_STRIDE", "(48, 48)"]
# a narrow R-50-C4 Mask R-CNN with few anchors, proposals and RoIs
_XPM_SMALL = [
    "MODEL.WEIGHTS", "",
    "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[8, 16, 32]]",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.CLIP.TEMPLATES", "single",
]  # fmt: skip
# each meta-architecture's small widths and sizes, on top of CPU_OPTS
SMALL_OPTS = {
    "LSeg": [
        *_CROP_64, *_SLIDE_64,
        "MODEL.VIT_BACKBONE.TIMM_MODEL", "vit_tiny_patch16_224",
        "MODEL.VIT_BACKBONE.TIMM_PRETRAINED", "",
        "MODEL.TORCHVISION_RESNET.ARCH", "resnet18",
        "MODEL.TORCHVISION_RESNET.WEIGHTS", "",
    ],
    "ZegCLIP": [*_CROP_64, *_SLIDE_64],
    "MaskCLIP": [],
    "MaskCLIPPlus": [
        "MODEL.CLIP.TEMPLATES", "single",
        "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
        "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16",
        "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", "[8]",
        "INPUT.CROP.SIZE", "(48, 48)",
    ],
    "FreeSeg": [
        *_CROP_64,
        "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", "18",
        "MODEL.RESNETS.STEM_TYPE", "basic",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
        "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 1]",
        "MODEL.RESNETS.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
        "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
        "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "6",
        "MODEL.MASK_FORMER.DEC_LAYERS", "3",
        "MODEL.MASK_FORMER.NUM_AUX_LOSSES", "-1",
        "MODEL.FREESEG.NUM_CLASS_PROMPT_TOKENS", "2",
        "MODEL.FREESEG.NUM_TASK_PROMPT_TOKENS", "2",
        "MODEL.FREESEG.INTERACTION.EMBED_DIM", "32",
    ],
    "FreeSegPromptLearner": [
        "MODEL.FREESEG.NUM_CLASS_PROMPT_TOKENS", "2",
        "MODEL.FREESEG.NUM_TASK_PROMPT_TOKENS", "2",
    ],
    "XPMTeacher": _XPM_SMALL,
    "XPMStudent": [*_XPM_SMALL, "MODEL.XPM.TEACHER_WEIGHTS", ""],
    "SemanticSegmentor": [
        *_CROP_64,
        "MODEL.WEIGHTS", "",
        "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    ],
}  # fmt: skip


def cpu_opts(arch: str, cache_dir: Path, *extra: str) -> list[str]:
    """CPU_OPTS, ``arch``'s SMALL_OPTS, the CLIP cache folder, then ``extra``."""
    return [*CPU_OPTS, *SMALL_OPTS[arch], "MODEL.CLIP.CACHE_DIR", str(cache_dir), *extra]


def small_semfpn_opts(out: Path, max_iter: int, *extra: str) -> list[str]:
    """A tiny SemFPN run into ``out`` on 48 px images, saving every 2 steps, no periodic
    evaluation (the reliability tests' training of seconds), then ``extra``."""
    return cpu_opts(
        "SemanticSegmentor", out / "cache",
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.WARMUP_ITERS", "0",
        "INPUT.MIN_SIZE_TRAIN", "(48,)",
        "INPUT.MAX_SIZE_TRAIN", "48",
        "INPUT.CROP.ENABLED", "False",
        "INPUT.SIZE_DIVISIBILITY", "48",
        "TEST.EVAL_PERIOD", "0",
        "OUTPUT_DIR", str(out), *extra,
    )  # fmt: skip


def is_resnet_clip(clip_name: str) -> bool:
    """A CLIP with a ModifiedResNet image tower: RN50, configs/clip/{tiny,toy}_rn.json."""
    return Path(clip_name).stem.lower().startswith(("rn", "tiny_rn", "toy_rn"))


def tiny_clip_opts(clip_name: str = "ViT-B-16") -> list[str]:
    """Overrides replacing ``clip_name`` by the random-init tiny CLIP of the same tower."""
    tiny = TINY_RN if is_resnet_clip(clip_name) else TINY_VIT
    return ["MODEL.CLIP.MODEL_NAME", str(tiny), "MODEL.CLIP.PRETRAINED", ""]


def header_commands(path: Path) -> list[list[str]]:
    """The ``python ...`` shell commands of a config's leading comment (continuation lines
    joined), each as argv."""
    lines = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    commands, current = [], ""
    for line in lines:
        if line.startswith("python ") or current:
            current += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                commands.append(shlex.split(current))
                current = ""
    return commands
