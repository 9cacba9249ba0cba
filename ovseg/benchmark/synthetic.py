"""Synthetic training inputs at a config's crop size, shaped as its training mapper gives them.

:func:`synthetic_batch` draws random images and label maps of a few shapes (a background
class, three rectangles or ellipses of the classes ground truth may hold, an ignored
rectangle). The same shapes become the mapper's mask targets when the config's mapper gives
``"instances"`` (:data:`MAPPER_TARGETS`): one mask per class for ``ovseg_semantic_mask``,
one per segment (the background included) for ``ovseg_panoptic``, one per shape for
``ovseg_instance``, and for ``ovseg_xpm_instance`` the shapes with their boxes plus one
caption pseudo instance per image (``gt_is_pseudo``, of an unseen class where the
vocabulary has one, else of the mapper's ``pseudo_vocabulary`` where it has one, carried as
each input's ``"pseudo_vocabulary"``), as XPM's mapper adds from a pseudo-label store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from detectron2.config import CfgNode
from detectron2.structures import BitMasks, Instances

__all__ = [
    "MAPPER_TARGETS",
    "SyntheticLabels",
    "synthetic_batch",
    "synthetic_labels",
    "synthetic_side",
]

#: training mapper -> the targets it adds to the semantic mapper's output ("" = none)
MAPPER_TARGETS = {
    "ovseg_semantic_mask": "semantic",
    "ovseg_panoptic": "panoptic",
    "ovseg_instance": "instance",
    "ovseg_xpm_instance": "xpm",
}
TARGETS = ("", "semantic", "panoptic", "instance", "xpm")
# the score XPM's mapper gives a pseudo instance: sigmoid of a typical cosine 0.3
PSEUDO_SCORE = 0.57


@dataclass(frozen=True)
class SyntheticLabels:
    """What synthetic labels draw from: the names labels index, the ids ground truth may
    hold (a zero-shot remap turns unseen classes into ignore), the ignore label, the
    mapper's targets (a :data:`TARGETS` kind) and the names pseudo instances index where the
    mapper has its own (XPM's LVIS caption vocabulary)."""

    names: List[str]
    label_ids: List[int]
    ignore: int
    targets: str = ""
    pseudo_vocabulary: Optional[List[str]] = None


def synthetic_labels(cfg: CfgNode) -> SyntheticLabels:
    """The training mapper's vocabulary, label ids, ignore label and targets kind."""
    from ..data import build_dataset_mapper

    plain = cfg.clone()
    plain.defrost()
    # synthetic inputs carry their own pseudo-labels: no store is opened
    plain.DATASETS.PSEUDO_LABELS = ""
    mapper = build_dataset_mapper(plain, True, cfg.DATASETS.TRAIN[0])
    if not hasattr(mapper, "vocabulary"):
        raise ValueError(
            f"the training mapper {type(mapper).__name__} (INPUT.DATASET_MAPPER_NAME "
            f"{cfg.INPUT.DATASET_MAPPER_NAME!r}) declares no vocabulary to draw synthetic "
            "labels from; benchmark with --data loader"
        )
    names = list(mapper.vocabulary)
    ignore = int(getattr(mapper, "ignore_label", 255))
    targets = MAPPER_TARGETS.get(cfg.INPUT.DATASET_MAPPER_NAME, "")
    pseudo = getattr(mapper, "pseudo_vocabulary", None)
    pseudo = None if pseudo is None else list(pseudo)
    label_map = getattr(mapper, "label_map", None)
    if label_map is None:
        return SyntheticLabels(names, list(range(len(names))), ignore, targets, pseudo)
    ids = sorted({int(v) for v in label_map if int(v) < len(names)})
    return SyntheticLabels(names, ids, ignore, targets, pseudo)


def synthetic_side(cfg: CfgNode) -> int:
    """The side of synthetic training images: the absolute crop, else the longest
    INPUT.MIN_SIZE_TRAIN."""
    crop = cfg.INPUT.CROP
    if crop.ENABLED and crop.TYPE == "absolute":
        return int(crop.SIZE[0])
    return int(max(cfg.INPUT.MIN_SIZE_TRAIN))


def _ellipse(y0: int, x0: int, y1: int, x1: int, size: int) -> torch.Tensor:
    """(size, size) bool: the ellipse inscribed in rows y0:y1, columns x0:x1."""
    ys = torch.arange(size, dtype=torch.float32)[:, None]
    xs = torch.arange(size, dtype=torch.float32)[None, :]
    cy, cx, ry, rx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
    inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    inside[y0 + (y1 - y0) // 2, x0 + (x1 - x0) // 2] = True  # never empty
    return inside


def _instances(
    owner: torch.Tensor, classes: Sequence[int], segments: Sequence[int], ignore: int
) -> Instances:
    """Bool masks of the ``segments`` (owner ids) whose class is not ignored."""
    from ..data.dataset_mappers.mask_targets import mask_targets

    kept = [k for k in segments if classes[k] != ignore]
    return mask_targets((owner == k for k in kept), [classes[k] for k in kept], owner.shape)


def _with_boxes(inst: Instances, pseudo: bool) -> Instances:
    """XPM's mapper's fields: BitMasks, their boxes, ``gt_is_pseudo`` and ``gt_scores``."""
    masks = BitMasks(inst.gt_masks)
    inst.gt_masks = masks
    inst.gt_boxes = masks.get_bounding_boxes()
    inst.gt_is_pseudo = torch.full((len(inst),), pseudo, dtype=torch.bool)
    inst.gt_scores = torch.full((len(inst),), PSEUDO_SCORE if pseudo else 1.0)
    return inst


def synthetic_batch(
    batch: int,
    size: int,
    vocabulary: List[str],
    label_ids: List[int],
    ignore: int,
    seed: int = 0,
    *,
    targets: str = "",
    task: str = "",
    pseudo_vocabulary: Optional[List[str]] = None,
) -> List[dict]:
    """Training inputs: random images and label maps of a few shapes of seen classes.

    Args:
        batch (int): images.
        size (int): image side.
        vocabulary (list[str]): the names labels index.
        label_ids (list[int]): the ids labels may hold.
        ignore (int): the ignore label.
        seed (int): the generator's seed.
        targets (str): the mapper's targets (:data:`MAPPER_TARGETS`); "" = none.
        task (str): a FreeSeg ``"task"`` every input carries; "" = none.
        pseudo_vocabulary (list[str] | None): the names the "xpm" targets' pseudo instances
            index (each input's "pseudo_vocabulary"); None = ``vocabulary``.

    Returns:
        list[dict]: "image" (3, size, size) uint8, "sem_seg" (size, size) long indexing
        "vocabulary" (one background class, three shapes, an ignored rectangle), the same
        labels as "pseudo_sem_seg", and with ``targets`` "instances" as the mapper's.
    """
    if targets not in TARGETS:
        raise ValueError(f"targets {targets!r} is not one of {list(TARGETS)}")
    g = torch.Generator().manual_seed(seed)

    def pick(n: int) -> int:
        return int(torch.randint(0, n, (), generator=g))

    unseen = [i for i in range(len(vocabulary)) if i not in set(label_ids)] or list(label_ids)
    if pseudo_vocabulary is not None:
        unseen = list(range(len(pseudo_vocabulary)))
    inputs = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        owner = torch.zeros((size, size), dtype=torch.long)  # 0: the background class
        classes = [label_ids[pick(len(label_ids))]]
        for k in range(4):
            y0, x0 = pick(size // 2), pick(size // 2)
            y1, x1 = y0 + 1 + pick(size // 2), x0 + 1 + pick(size // 2)
            classes.append(label_ids[pick(len(label_ids))] if k < 3 else ignore)
            if k == 1:  # one ellipse among the rectangles
                owner[_ellipse(y0, x0, y1, x1, size)] = k + 1
            else:
                owner[y0:y1, x0:x1] = k + 1
        label = torch.tensor(classes)[owner]
        # the same labels stand in for a pseudo-label store's (MaskCLIP+ "store" source)
        x = {"image": image, "sem_seg": label, "pseudo_sem_seg": label.clone(),
             "vocabulary": list(vocabulary)}  # fmt: skip
        if targets:
            x["instances"] = _targets(targets, owner, classes, ignore, unseen, pick)
        if task:
            x["task"] = task
        if pseudo_vocabulary is not None:
            x["pseudo_vocabulary"] = list(pseudo_vocabulary)
        inputs.append(x)
    return inputs


def _targets(kind: str, owner, classes, ignore: int, unseen: List[int], pick) -> Instances:
    """One image's ``"instances"`` as the ``kind`` of mapper gives them."""
    from ..data.dataset_mappers.mask_targets import semantic_mask_targets

    if kind == "semantic":
        return semantic_mask_targets(torch.tensor(classes)[owner], ignore)
    if kind == "panoptic":
        return _instances(owner, classes, range(len(classes)), ignore)
    shapes = _instances(owner, classes, range(1, len(classes)), ignore)
    if kind == "instance":
        return shapes
    size = owner.shape[0]
    y0, x0 = pick(size // 2), pick(size // 2)
    y1, x1 = y0 + 1 + pick(size // 2), x0 + 1 + pick(size // 2)
    region = torch.zeros_like(owner)
    region[_ellipse(y0, x0, y1, x1, size)] = 1
    pseudo = _instances(region, [ignore, unseen[pick(len(unseen))]], [1], ignore)
    return Instances.cat([_with_boxes(shapes, False), _with_boxes(pseudo, True)])
