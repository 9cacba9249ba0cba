"""Helpers for the MaskCLIP+ tests: tiny configs, a fixture ADE20K with unseen classes, mappers."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from ovseg_testing import ROOT
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import transforms as T

from ovseg import add_ovseg_config
from ovseg.data.dataset_mappers import SemanticDatasetMapper
from ovseg.data.dataset_mappers.semantic import zero_shot_label_map
from ovseg.pseudo import PseudoLabelStore
from ovseg.vocab import Vocabulary

TINY_VIT = str(ROOT / "configs" / "clip" / "tiny_vit.json")
ADE = Vocabulary.builtin("ade150")
SKY, BED, GRASS, TABLE = 2, 7, 9, 15  # grass and table are unseen in ade150's split
# a tiny dilated ResNet-18 (output stride 8) under a 16-wide DeepLabv2 head
TINY_STUDENT = [
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


def tiny_cfg(cache_dir: Path, *opts):
    """A MaskCLIP+ config: tiny random CLIP ViT teacher, tiny student, CPU, no datasets."""
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_list(
        [
            "MODEL.META_ARCHITECTURE", "MaskCLIPPlus",
            "MODEL.DEVICE", "cpu",
            "MODEL.CLIP.MODEL_NAME", TINY_VIT,
            "MODEL.CLIP.PRETRAINED", "",
            "MODEL.CLIP.CACHE_DIR", str(cache_dir),
            "MODEL.MASKCLIP.PROMPT_DENOISE", "True",
            "MODEL.MASKCLIP.KEY_SMOOTHING", "True",
            "DATASETS.TRAIN", "()",
            "DATASETS.TEST", "()",
            *TINY_STUDENT,
            *opts,
        ]
    )  # fmt: skip
    return cfg


def write_unseen_fixture(root: Path, n: int = 3, size=(40, 52)) -> List[dict]:
    """ADE20K-layout images whose labels hold seen (sky, bed) and unseen (grass, table)
    classes, coloured so a position- and colour-dependent teacher tells them apart.
    Returns the training dataset dicts."""
    rng = np.random.default_rng(3)
    h, w = size
    img_dir = root / "images"
    gt_dir = root / "labels"
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    dicts = []
    for i in range(n):
        label = np.full((h, w), SKY, np.uint8)
        label[:, w // 2 :] = BED
        y, x = int(rng.integers(2, h - 26)), int(rng.integers(2, w - 26))
        label[y : y + 16, x : x + 24] = GRASS
        label[-10:, :20] = TABLE
        label[:2, :2] = 255
        image = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        for cls, colour in ((SKY, (60, 90, 230)), (BED, (200, 40, 40)), (GRASS, (40, 190, 40))):
            image[label == cls] += np.array(colour, np.uint8) // 2
        image[label == TABLE] += np.array((120, 100, 20), np.uint8)
        stem = f"img_{i:03d}"
        Image.fromarray(image).save(img_dir / f"{stem}.png")
        Image.fromarray(label).save(gt_dir / f"{stem}.png")
        dicts.append(
            {
                "file_name": str(img_dir / f"{stem}.png"),
                "sem_seg_file_name": str(gt_dir / f"{stem}.png"),
                "image_id": stem,
            }
        )
    return dicts


def train_mapper(
    setting: str = "transductive",
    augmentations: Sequence = (),
    store: Optional[PseudoLabelStore] = None,
):
    """The real training mapper on ADE-150 names in a zero-shot setting, no padding; with a
    ``store``, its labels are translated into training indices as the loader's mapper does
    (DATASETS.PSEUDO_LABELS)."""
    table, vocabulary = zero_shot_label_map(
        ADE.names, unseen=ADE.unseen, setting=setting, ignore_label=255
    )
    return SemanticDatasetMapper(
        is_train=True,
        augmentations=list(augmentations),
        image_format="RGB",
        ignore_label=255,
        size_divisibility=-1,
        vocabulary=vocabulary,
        label_map=table,
        pseudo_label_map=store.label_map_to(vocabulary, 255) if store is not None else None,
    )


def crop_flip_augmentations():
    """A resize, a random crop and a certain flip: nothing lines up by accident."""
    return [
        T.ResizeShortestEdge((56,), max_size=1000, sample_style="choice"),
        T.RandomCrop("absolute", (36, 44)),
        T.RandomFlip(prob=1.0, horizontal=True),
    ]


def eval_mapper(vocabulary: Sequence[str]):
    """The test-mode mapper the store is generated with (no resize: original size)."""
    return SemanticDatasetMapper(
        is_train=False,
        augmentations=[],
        image_format="RGB",
        ignore_label=255,
        size_divisibility=-1,
        vocabulary=vocabulary,
    )


def free_pixels(sample: dict) -> torch.Tensor:
    return sample["sem_seg"] == 255
