"""XPM test doubles: a tiny captioned instance dataset in the COCO layout, a fake proposer
standing in for the XPM teacher (``propose(batched_inputs) -> list[Instances]``) and a CLIP
stand-in with hand-built embeddings.

Dataset ``tiny_xpm_train`` (``<root>/coco/train2017``, ``annotations/instances_train2017.json``
and ``captions_train2017.json`` as COCO ships them): two 32x48 images; COCO categories
person (1), dog (18, unseen) and tv (72); image 1 holds a person, a dog and a tv side by side,
image 2 a person and a tv. Its captions use real COCO phrasing (plurals, "television").
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from ovseg.data.datasets.instance_common import register_instance_split

XPM_TRAIN = "tiny_xpm_train"
HEIGHT, WIDTH = 32, 48
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 18, "name": "dog", "isthing": 1},
    {"id": 72, "name": "tv", "isthing": 1},
]
UNSEEN_IDS = (18,)
# image id -> [(category id, (rows, cols))]; objects are 16-column stripes in rows 4-27
OBJECTS = {
    1: [(1, (slice(4, 28), slice(0, 16))), (18, (slice(4, 28), slice(16, 32))),
        (72, (slice(4, 28), slice(32, 48)))],
    2: [(1, (slice(4, 28), slice(0, 16))), (72, (slice(4, 28), slice(32, 48)))],
}  # fmt: skip
CAPTIONS = {
    1: [
        "A man and his two dogs watching television.",
        "A woman sits next to a puppy near the TV.",
        "Some people with a dog in a living room.",
    ],
    2: ["A person standing beside an old tv set.", "Someone next to a television."],
}


def object_mask(rows_cols) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[rows_cols] = True
    return mask


def write_captioned_coco(root: Path) -> Path:
    """Write the two images, the instance json (RLE) and the captions json."""
    from pycocotools import mask as mask_util

    coco = root / "coco"
    (coco / "train2017").mkdir(parents=True, exist_ok=True)
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations, captions = [], [], []
    for image_id, objects in OBJECTS.items():
        name = f"{image_id:012d}.jpg"
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(coco / "train2017" / name, quality=100)
        images.append({"id": image_id, "file_name": name, "height": HEIGHT, "width": WIDTH})
        for cat, where in objects:
            mask = object_mask(where)
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                 "iscrowd": 0, "area": int(mask.sum()), "bbox": box, "segmentation": rle}
            )  # fmt: skip
        for text in CAPTIONS[image_id]:
            captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
    instances = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (coco / "annotations/instances_train2017.json").write_text(json.dumps(instances))
    caption_json = {"images": images, "annotations": captions}
    (coco / "annotations/captions_train2017.json").write_text(json.dumps(caption_json))
    return coco


def register_captioned_coco(coco: Path, name: str = XPM_TRAIN) -> None:
    """Register the dataset :func:`write_captioned_coco` wrote under ``coco`` (with captions)."""
    register_instance_split(
        name,
        categories=CATEGORIES,
        unseen_ids=UNSEEN_IDS,
        image_root=str(coco / "train2017"),
        json_file=str(coco / "annotations/instances_train2017.json"),
        captions_json=str(coco / "annotations/captions_train2017.json"),
        prepare_script="prepare_coco_instance_48_17.py",
    )


@contextmanager
def registered_captioned_coco(root: Path, name: str = XPM_TRAIN) -> Iterator[Path]:
    """Write the dataset and register it (with captions) while the block runs."""
    coco = write_captioned_coco(root)
    register_captioned_coco(coco, name)
    try:
        yield coco
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def captioned_labelling_opts(tmp_path: Path, *extra: str) -> List[str]:
    """Config overrides that label :func:`registered_captioned_coco`'s images: a random tiny
    ViT CLIP cached under ``tmp_path``, the fixture's three names, 32-pixel test inputs
    through the XPM mapper, no test set; ``extra`` (the teacher, region embedding, ...)
    comes first."""
    from .paths import TINY_VIT

    return [
        *extra,
        "MODEL.CLIP.MODEL_NAME", str(TINY_VIT),
        "MODEL.CLIP.PRETRAINED", "",
        "MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache"),
        "MODEL.DEVICE", "cpu",
        "MODEL.OVSEG.TRAIN_VOCABULARY", "person,dog,tv",
        "INPUT.DATASET_MAPPER_NAME", "ovseg_xpm_instance",
        "INPUT.MIN_SIZE_TEST", "32",
        "DATASETS.TRAIN", f"('{XPM_TRAIN}',)",
        "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path / "log"),
    ]  # fmt: skip


class FakeProposer(nn.Module):
    """Proposes, per image, every fixture object's stripe (probability 0.9 inside, 0.1
    outside) plus one empty proposal, at the input's original size; ``calls`` counts images.

    Stands in for the XPM teacher's ``propose``; an nn.Module with one parameter so the
    labeller fingerprint has weights to hash."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,), float(seed)))
        self.calls: List[int] = []

    def propose(self, batched_inputs: Sequence[dict]) -> List[Instances]:
        out = []
        for inputs in batched_inputs:
            image_id = int(inputs["image_id"])
            self.calls.append(image_id)
            size = (int(inputs["height"]), int(inputs["width"]))
            masks = [object_mask(where) for _, where in OBJECTS[image_id]]
            masks.append(np.zeros(size, dtype=bool))  # a proposal with nothing above 0.5
            probs = torch.from_numpy(np.stack(masks)).float() * 0.8 + 0.1
            boxes = [_box(m) for m in masks]
            inst = Instances(size)
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
            inst.pred_masks = probs
            inst.scores = torch.linspace(0.9, 0.5, len(masks))
            out.append(inst)
        return out


def _box(mask: np.ndarray) -> List[float]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0.0, 0.0, 1.0, 1.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


class HandCLIP:
    """Text and region embeddings from hand-built tables.

    Args:
        texts: text -> embedding (any length D); templates are ignored.
        regions: first column of a region mask -> embedding.
    """

    def __init__(self, texts: Dict[str, Sequence[float]], regions: Dict[int, Sequence[float]]):
        self.texts, self.regions = texts, regions
        self.modes: List[str] = []

    def encode_text(self, names, templates):
        return F.normalize(torch.tensor([self.texts[n] for n in names]).float(), dim=-1)

    def region_embeddings(self, images, masks, mode="pool"):
        self.modes.append(mode)
        out = []
        for m in masks:
            cols = [int(torch.nonzero(x.any(dim=0))[0]) for x in m]
            rows = torch.tensor([self.regions[c] for c in cols]).float()
            out.append(F.normalize(rows, dim=-1))
        return out


FAKE_TEACHER = "FakeXPMTeacher"


def register_fake_teacher() -> str:
    """Register :class:`FakeProposer` as the meta-architecture ``FakeXPMTeacher`` (once) and
    return its name: a config naming it (and MODEL.XPM.TEACHER_META_ARCHITECTURE) stands in
    for an XPM teacher config."""
    from detectron2.modeling import META_ARCH_REGISTRY

    if FAKE_TEACHER not in META_ARCH_REGISTRY:

        class FakeXPMTeacher(FakeProposer):
            def __init__(self, cfg):
                super().__init__()

            def forward(self, batched_inputs):
                return self.propose(batched_inputs)

        META_ARCH_REGISTRY._do_register(FAKE_TEACHER, FakeXPMTeacher)
    return FAKE_TEACHER
