# Follows the official FreeSeg prompt-stage data: one record per region and task
# (mask2former/data/datasets/register_coco_full.py:236-275, utils.py:10-42) and at most N of
# them per class and task (mask2former/data/build.py:348-460), re-written.
"""Region records of FreeSeg's prompt stage: N samples per class per task.

The official prompt stage trains on one ground-truth region per sample. A training image
gives one record per task and region:

- ``sem_seg``: one per class present (the union of the class's segments; with
  ``labels=True``, as the release, the classes of the image's label map, whose pixels the
  region is: ``register_coco_full.py:236-246`` reads them from its semantic PNGs);
- ``ins_seg``: one per non-crowd segment of a thing class;
- ``pan_seg``: one per non-crowd segment.

Then, per task, the records of each class are cut to ``per_class`` drawn at random (a class
with fewer keeps all of them; ``build.py:366-373``). A record is the image's dict plus
``"task"`` (the official key) and ``"region_class"`` (the class name); a panoptic record's
``segments_info`` keeps only the region's segments, so the mapper builds only its masks.
The region mapper (``ovseg_region``, :mod:`ovseg.data.dataset_mappers.region_crop`) crops
the mask of ``"region_class"`` (union for ``sem_seg``) out of the image.

Official defect, reproduced by ``replace=True``: ``rng.choice(groups, size=N)`` draws with
replacement (numpy's default), so a class with more than N records keeps about 63% of N
distinct ones and repeats the rest; the default here draws N distinct records.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from .label_counts import label_classes, load_label_counts

__all__ = ["TASK_KEYS", "image_regions", "region_dataset_for", "sample_regions"]

logger = logging.getLogger(__name__)

#: task -> the official record key (``register_coco_full.py:243, 258, 271``)
TASK_KEYS = {"semantic": "sem_seg", "instance": "ins_seg", "panoptic": "pan_seg"}
#: a panoptic record's keys that a semantic region record drops (the region mapper then crops
#: the label map's class)
_SEGMENT_KEYS = ("segments_info", "pan_seg_file_name", "annotations")


def image_regions(
    record: dict,
    tasks: Sequence[str],
    classes: Sequence[str],
    keep: Callable[[str], bool] = lambda name: True,
    ignore_label: int = 255,
    labels: bool = False,
    label_counts: Optional[Dict[str, List[int]]] = None,
) -> List[dict]:
    """The region records of one image dict.

    Args:
        record (dict): a detectron2 dict: panoptic (``segments_info`` with contiguous
            ``category_id``, ``iscrowd``, ``isthing``) or semantic (``sem_seg_file_name``).
        tasks: among ("semantic", "instance", "panoptic"); semantic dicts give only semantic.
        classes: the dataset's class names by contiguous id (``stuff_classes``).
        keep: whether a class name may be a region (the training vocabulary's names).
        ignore_label (int): the label PNG's ignore value.
        labels (bool): a panoptic record's semantic regions are its label map's classes
            (``sem_seg_file_name``), as a semantic record's, not its segments' unions.
        label_counts: the label folder's classes per file name
            (:func:`~ovseg.data.label_counts.load_label_counts`); a name not in it is read.

    Returns:
        list[dict]: one record per (task, region), see the module docstring.
    """
    out = []
    segments = record.get("segments_info")
    if "semantic" in tasks and (segments is None or labels):
        semantic = {k: v for k, v in record.items() if k not in _SEGMENT_KEYS}
        path = record["sem_seg_file_name"]
        present = (label_counts or {}).get(os.path.basename(path))
        if present is None:
            present = label_classes(path, ignore_label)
        for c in present:
            if c < len(classes) and keep(classes[c]):
                out.append({**semantic, "task": "sem_seg", "region_class": classes[c]})
    if segments is None:
        return out
    segments = [s for s in segments if not s.get("iscrowd", 0) and keep(classes[s["category_id"]])]
    if "semantic" in tasks and not labels:
        by_class: Dict[int, list] = defaultdict(list)
        for s in segments:
            by_class[s["category_id"]].append(s)
        for c, segs in by_class.items():
            out.append(
                {**record, "segments_info": segs, "task": "sem_seg", "region_class": classes[c]}
            )
    for task in ("instance", "panoptic"):
        if task not in tasks:
            continue
        for s in segments:
            if task == "instance" and not s.get("isthing", False):
                continue
            name = classes[s["category_id"]]
            out.append(
                {**record, "segments_info": [s], "task": TASK_KEYS[task], "region_class": name}
            )
    return out


def sample_regions(
    regions: Sequence[dict], per_class: int, seed: int = 0, replace: bool = False
) -> List[dict]:
    """At most ``per_class`` region records per (task, class).

    As ``build.py:389-452``: tasks in the order sem_seg, ins_seg, pan_seg, classes in order
    of first appearance, one fresh generator seeded ``seed`` per task.

    Args:
        regions: :func:`image_regions`' records of the whole dataset.
        per_class (int): N > 0.
        seed (int): the generator seed (official DATASETS.SAMPLE_SEED 0).
        replace (bool): draw with replacement (the official defect).
    """
    if per_class <= 0:
        raise ValueError(f"per_class must be positive, got {per_class}")
    out = []
    for key in TASK_KEYS.values():
        groups: Dict[str, list] = {}
        for r in regions:
            if r["task"] == key:
                groups.setdefault(r["region_class"], []).append(r)
        rng = np.random.default_rng(seed)
        for group in groups.values():
            if len(group) < per_class:
                out.extend(group)
            else:
                picks = rng.choice(len(group), size=per_class, replace=replace)
                out.extend(group[int(i)] for i in picks)
    return out


def region_dataset_for(cfg) -> Optional[List[dict]]:
    """The prompt stage's region records (FreeSegPromptLearner): at most
    MODEL.FREESEG.PROMPT_SAMPLES_PER_CLASS per class and task, or every one when it is not
    positive; None for any other meta-architecture (it trains on whole images)."""
    fs = cfg.MODEL.FREESEG
    if cfg.MODEL.META_ARCHITECTURE != "FreeSegPromptLearner":
        if fs.PROMPT_SAMPLES_PER_CLASS > 0:
            raise ValueError(
                "MODEL.FREESEG.PROMPT_SAMPLES_PER_CLASS samples regions for the prompt stage "
                f"(FreeSegPromptLearner); {cfg.MODEL.META_ARCHITECTURE} trains on whole "
                "images: set it to -1"
            )
        return None
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..modeling.freeseg.tasks import semantic_targets, train_tasks_for
    from ..vocab import normalize_name, training_vocabulary

    tasks = train_tasks_for(cfg)
    labels = semantic_targets(cfg) == "sem_seg"
    vocab = training_vocabulary(cfg)
    names = {normalize_name(n) for n in vocab.names} if vocab is not None else None
    regions = []
    for dataset in cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(dataset)
        classes = list(meta.stuff_classes)
        # the label folder's classes per file, when its prepare script wrote them
        counts = load_label_counts(meta.get("sem_seg_root", None)) if "semantic" in tasks else None
        # a label map read per image (semantic regions): progress over the whole set
        records = tqdm(DatasetCatalog.get(dataset), desc=f"{dataset} regions", unit="img")
        for record in records:
            regions += image_regions(
                record,
                tasks,
                classes,
                keep=lambda n: names is None or normalize_name(n) in names,
                ignore_label=meta.get("ignore_label", 255),
                labels=labels,
                label_counts=counts,
            )
    per_class = fs.PROMPT_SAMPLES_PER_CLASS
    sampled = (
        sample_regions(regions, per_class, fs.PROMPT_SAMPLE_SEED, fs.PROMPT_SAMPLE_REPLACE)
        if per_class > 0
        else regions
    )
    if not sampled:
        raise ValueError(f"no region of a training class in {list(cfg.DATASETS.TRAIN)}")
    logger.info("Prompt stage: %d region records of %d", len(sampled), len(regions))
    return sampled
