"""Tiny random-init models for CPU tests: the CLIP teacher and one ``tiny_<method>_cfg`` /
``tiny_<method>`` pair per student, each on the tiny CLIP ViT (configs/clip/tiny_vit.json).

The configs set ``MODEL.CLIP.CACHE_DIR`` to the given folder so text embeddings stay out of
the user's cache; ``tiny_<method>`` seeds torch before building, so equal seeds give equal
weights."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

import open_clip
import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model

from ovseg import add_ovseg_config
from ovseg.clip.build import register_model_config
from ovseg.engine.defaults import load_config
from ovseg.modeling.meta_arch.maskclip_plus import MaskCLIPPlus
from ovseg_testing.data import ADE
from ovseg_testing.paths import CONFIGS, TINY_VIT

PathLike = Union[str, Path]


def _ovseg_cfg() -> CfgNode:
    cfg = get_cfg()
    add_ovseg_config(cfg)
    return cfg


# ---------------------------------------------------------------- the CLIP teacher
def random_clip_model(config: Path, seed: int = 0, **kwargs):
    """Seeded random-init open_clip model from a JSON model config, its tokenizer and its
    registered name."""
    name = register_model_config(str(config))
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None, **kwargs)
    return model, open_clip.get_tokenizer(name), name


def tiny_clip_cfg(model_name: PathLike = TINY_VIT, pretrained: str = "", cache_dir: PathLike = ""):
    """A config with ovseg's keys, on CPU, for ``build_clip_teacher``."""
    cfg = _ovseg_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLIP.MODEL_NAME = str(model_name)
    cfg.MODEL.CLIP.PRETRAINED = pretrained
    cfg.MODEL.CLIP.CACHE_DIR = str(cache_dir)
    return cfg


# ---------------------------------------------------------------- LSeg
def tiny_lseg_cfg(cache_dir: PathLike, **lseg) -> CfgNode:
    """An LSeg config on the tiny CLIP ViT (random weights), CPU, small decoder; keyword
    arguments set ``MODEL.LSEG.<KEY>`` (``logit_scale``: ``MODEL.OVSEG.LOGIT_SCALE``)."""
    cfg = tiny_clip_cfg(cache_dir=cache_dir)
    cfg.MODEL.META_ARCHITECTURE = "LSeg"
    cfg.MODEL.BACKBONE.NAME = "build_clip_vit_backbone"
    cfg.MODEL.CLIP.TEMPLATES = "name"  # the paper's text: the bare class name
    cfg.MODEL.DPT.FEATURES = 16
    cfg.MODEL.DPT.REASSEMBLE_CHANNELS = [8, 8, 16, 16]
    for key, value in lseg.items():
        # the temperature belongs to the shared text classifier (MODEL.OVSEG)
        node = cfg.MODEL.OVSEG if "logit_scale" in key else cfg.MODEL.LSEG
        setattr(node, key.upper(), value)
    return cfg


def tiny_lseg(cache_dir: PathLike, seed: int = 0, **lseg):
    torch.manual_seed(seed)
    return build_model(tiny_lseg_cfg(cache_dir, **lseg))


# ---------------------------------------------------------------- ZegCLIP
# keyword -> (config node, key) of the keys ZegCLIP shares with the other students
_ZEGCLIP_SHARED = {
    "bg_embed": ("MODEL.OVSEG", "BG_EMBED"),
    "background_class": ("MODEL.OVSEG", "BACKGROUND_CLASS"),
    "self_training_start_iter": ("MODEL.OVSEG.SELF_TRAINING", "START_ITER"),
}


def tiny_zegclip_cfg(cache_dir: PathLike, **zegclip) -> CfgNode:
    """A ZegCLIP config on the tiny CLIP ViT (random weights, D=32, 3 blocks, patch 16), CPU,
    without dropout (so training steps are deterministic) and without datasets; keyword
    arguments set ``MODEL.ZEGCLIP.<KEY>`` or one of the shared keys above."""
    cfg = tiny_clip_cfg(cache_dir=cache_dir)
    cfg.MODEL.META_ARCHITECTURE = "ZegCLIP"
    cfg.MODEL.BACKBONE.NAME = "build_clip_vit_prompted_backbone"
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.MODEL.ZEGCLIP.NUM_PROMPTS = 3
    cfg.MODEL.ZEGCLIP.DECODER_HEADS = 4
    cfg.MODEL.ZEGCLIP.PROMPT_DROPOUT = 0.0
    cfg.MODEL.ZEGCLIP.DECODER_DROPOUT = 0.0
    for key, value in zegclip.items():
        path, name = _ZEGCLIP_SHARED.get(key, ("MODEL.ZEGCLIP", key.upper()))
        node = cfg
        for part in path.split("."):
            node = node[part]
        setattr(node, name, value)
    return cfg


def tiny_zegclip(cache_dir: PathLike, seed: int = 0, **zegclip):
    torch.manual_seed(seed)
    return build_model(tiny_zegclip_cfg(cache_dir, **zegclip))


# ---------------------------------------------------------------- MaskCLIP
# the shipped MaskCLIP config that the tiny one shrinks
MASKCLIP_CONFIG = CONFIGS / "voc" / "maskclip" / "maskclip_vitb16_bs1.yaml"


def tiny_maskclip_opts(cache_dir: PathLike) -> list[str]:
    """KEY VALUE overrides shrinking MASKCLIP_CONFIG to the tiny CLIP ViT on 64-pixel inputs
    with one template (also what the demo tests pass to ``demo.py --opts``)."""
    return [
        "MODEL.DEVICE", "cpu",
        "MODEL.CLIP.MODEL_NAME", str(TINY_VIT),
        "MODEL.CLIP.PRETRAINED", "",
        "MODEL.CLIP.TEMPLATES", "single",
        "MODEL.CLIP.CACHE_DIR", str(cache_dir),
        "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64",
    ]  # fmt: skip


def tiny_maskclip_cfg(cache_dir: PathLike, *opts: str) -> CfgNode:
    """The shipped VOC MaskCLIP config on the tiny CLIP ViT, plus KEY VALUE ``opts``."""
    return load_config(str(MASKCLIP_CONFIG), [*tiny_maskclip_opts(cache_dir), *opts])


# ---------------------------------------------------------------- MaskCLIP+
# a tiny dilated ResNet-18 (output stride 8) under a 16-wide DeepLabv2 head
TINY_DEEPLAB_STUDENT = [
    "MODEL.BACKBONE.NAME", "build_resnet_deeplab_backbone",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES4_DILATION", "2",
    "MODEL.RESNETS.RES5_DILATION", "4",
    "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 1]",
    "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res5']",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.DENSE_HEAD.NAME", "DeepLabV2Head",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res5']",
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16",
    "MODEL.SEM_SEG_HEAD.NORM", "BN",
]  # fmt: skip


def tiny_maskclip_plus_cfg(cache_dir: PathLike, *opts: str) -> CfgNode:
    """A MaskCLIP+ config: tiny random CLIP ViT teacher, tiny student, CPU, no datasets,
    plus KEY VALUE ``opts``."""
    cfg = _ovseg_cfg()
    cfg.merge_from_list(
        [
            "MODEL.META_ARCHITECTURE", "MaskCLIPPlus",
            "MODEL.DEVICE", "cpu",
            "MODEL.CLIP.MODEL_NAME", str(TINY_VIT),
            "MODEL.CLIP.PRETRAINED", "",
            "MODEL.CLIP.CACHE_DIR", str(cache_dir),
            "MODEL.MASKCLIP.PROMPT_DENOISE", "True",
            "MODEL.MASKCLIP.KEY_SMOOTHING", "True",
            "DATASETS.TRAIN", "()",
            "DATASETS.TEST", "()",
            *TINY_DEEPLAB_STUDENT,
            *opts,
        ]
    )  # fmt: skip
    return cfg


def tiny_maskclip_plus(cache_dir: PathLike, *opts: str, seed: int = 0, **overrides) -> MaskCLIPPlus:
    """``tiny_maskclip_plus_cfg`` built with keyword ``overrides`` of its ``from_config``
    arguments; without datasets, ADE-150's unseen classes unless ``unseen`` is given."""
    torch.manual_seed(seed)
    overrides.setdefault("unseen", ADE.unseen)
    return MaskCLIPPlus(tiny_maskclip_plus_cfg(cache_dir, *opts), **overrides)


# ---------------------------------------------------------------- FreeSeg prompt stage
def tiny_freeseg_prompt_cfg(cache_dir: PathLike, *opts: str) -> CfgNode:
    """FreeSeg's prompt-learning stage on the tiny random CLIP ViT, CPU, 4 class-context and
    2 task tokens, no datasets, plus KEY VALUE ``opts``."""
    cfg = tiny_clip_cfg(cache_dir=cache_dir)
    cfg.merge_from_list(
        [
            "MODEL.META_ARCHITECTURE", "FreeSegPromptLearner",
            "MODEL.FREESEG.NUM_CLASS_PROMPT_TOKENS", "4",
            "MODEL.FREESEG.NUM_TASK_PROMPT_TOKENS", "2",
            "DATASETS.TRAIN", "()",
            "DATASETS.TEST", "()",
            *opts,
        ]
    )  # fmt: skip
    return cfg


# ---------------------------------------------------------------- FreeSeg
# a tiny ResNet-18 (res2-res5, 8-wide stem) under a 32-wide pixel decoder and a 3-layer decoder
TINY_FREESEG = [
    "MODEL.BACKBONE.NAME", "build_resnet_deeplab_backbone",
    "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
    "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 1]",
    "MODEL.RESNETS.STEM_TYPE", "basic",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.NORM", "GN",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", "2",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS", "2",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "6",
    "MODEL.MASK_FORMER.NHEADS", "2",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "3",
    "MODEL.FREESEG.NUM_CLASS_PROMPT_TOKENS", "4",
    "MODEL.FREESEG.NUM_TASK_PROMPT_TOKENS", "2",
    "MODEL.FREESEG.INTERACTION.EMBED_DIM", "32",
    "MODEL.FREESEG.INTERACTION.NUM_HEADS", "2",
]  # fmt: skip


def tiny_freeseg_cfg(cache_dir: PathLike, *opts: str) -> CfgNode:
    """FreeSeg on the tiny random CLIP ViT and a tiny ResNet-18 / pixel decoder / 3-layer
    decoder with 6 queries, CPU, no datasets, plus KEY VALUE ``opts``."""
    cfg = tiny_clip_cfg(cache_dir=cache_dir)
    cfg.merge_from_list(
        [
            "MODEL.META_ARCHITECTURE", "FreeSeg",
            "DATASETS.TRAIN", "()",
            "DATASETS.TEST", "()",
            *TINY_FREESEG,
            *opts,
        ]
    )  # fmt: skip
    return cfg


# ---------------------------------------------------------------- XPM
def tiny_xpm_cfg(cache_dir: PathLike, arch: str = "XPMTeacher", *opts: str) -> CfgNode:
    """An XPM teacher or student (``arch``) on the tiny random CLIP ViT: a narrow R-50-C4
    Mask R-CNN (SMALL_OPTS), CPU, no datasets, plus KEY VALUE ``opts``."""
    from ovseg_testing.configs import SMALL_OPTS

    cfg = tiny_clip_cfg(cache_dir=cache_dir)
    cfg.merge_from_list(
        [
            "MODEL.META_ARCHITECTURE", arch,
            "DATASETS.TRAIN", "()",
            "DATASETS.TEST", "()",
            *SMALL_OPTS[arch],
            *opts,
        ]
    )  # fmt: skip
    return cfg


XPM_NAMES = ["cat", "dog", "bird"]


def xpm_batch(n: int = 2, pseudo: bool = True, flag: bool = True) -> list:
    """Training inputs as the XPM students take them: 64x64 images each with a "cat" box of
    ground truth and a "dog" box that is a pseudo-label (``pseudo``; ``flag`` False leaves
    ``gt_is_pseudo`` out, so both are ground truth), vocabulary :data:`XPM_NAMES`."""
    from detectron2.structures import Instances

    batch = []
    for i in range(n):
        image = torch.full((3, 64, 64), 30, dtype=torch.uint8)
        masks = torch.zeros(2 if pseudo else 1, 64, 64, dtype=torch.bool)
        masks[0, 8 + i : 30 + i, 6:34] = True
        image[0, masks[0]] = 220
        if pseudo:
            masks[1, 36:58, 30 - i : 60 - i] = True
            image[2, masks[1]] = 200
        inst = Instances((64, 64))
        inst.gt_masks = masks
        inst.gt_classes = torch.tensor([0, 1][: len(masks)])
        if flag:
            inst.gt_is_pseudo = torch.tensor([False, True][: len(masks)])
        batch.append({"image": image, "instances": inst, "vocabulary": list(XPM_NAMES)})
    return batch


def fit_steps(model, batch: list, optimizer, steps: int, key: Optional[str] = None) -> List[float]:
    """``steps`` optimisation steps of a training-mode ``model`` on one ``batch``; the loss
    is its output ``key`` (default: the sum of its losses), each step's value returned."""
    losses = []
    for _ in range(steps):
        out = model(batch)
        loss = out[key] if key is not None else sum(out.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
