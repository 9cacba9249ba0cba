# Follows the official FreeSeg multi-task training data (mask2former/data/dataset_mappers/
# mask_former_full_dataset_mapper.py: per-task targets of one sample) and its per-task
# inference switch (open_vocabulary_model.py:260-330), re-written.
"""FreeSeg's three tasks: their names, the targets of each, the tasks a training batch
supports and the tasks a test set is evaluated on; which classes the test-time CLIP
ensemble weights as seen, and the panoptic / instance post-processing arguments.

A sample's ``"instances"`` (ovseg's mask-target mappers) hold its segments; per task:

- ``semantic``: one mask per class present: the union of the class's segments, or with
  ``MODEL.FREESEG.SEMANTIC_TARGETS "sem_seg"`` the sample's ``"sem_seg"``, the dataset's
  semantic label map (the release's all-task mappers read theirs, :func:`semantic_targets`);
- ``instance``: the segments of thing classes only;
- ``panoptic``: every segment (crowd segments are never targets: the mappers drop them).
"""

from __future__ import annotations

from typing import Collection, Dict, Optional, Sequence, Tuple

import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Instances

from ...data.dataset_mappers.mask_targets import semantic_mask_targets
from ...utils.choices import check_choice
from ...vocab import training_vocabulary

__all__ = [
    "MAPPER_TASKS",
    "POST_DEFAULTS",
    "SEMANTIC_TARGETS",
    "ensemble_seen_classes",
    "semantic_targets",
    "post_config",
    "TASKS",
    "task_targets",
    "task_texts",
    "test_tasks_for",
    "train_tasks_for",
]

#: the tasks, in the order of MODEL.FREESEG.TASK_NAMES (official INPUT.TASK_NAME)
TASKS = ("semantic", "instance", "panoptic")
#: the tasks whose targets a mapper's ``"instances"`` can give
MAPPER_TASKS = {
    "ovseg_panoptic": TASKS,
    "ovseg_instance": ("instance",),
    "ovseg_semantic_mask": ("semantic",),
    # the prompt stage's region crops: every task the records have (a semantic dataset
    # gives only semantic regions, ovseg.data.region_sampling)
    "ovseg_region": TASKS,
}
#: where the semantic task's masks come from (MODEL.FREESEG.SEMANTIC_TARGETS)
SEMANTIC_TARGETS = ("segments", "sem_seg")
#: a sample's optional ``"task"`` (the official datasets' keys) -> task
TASK_KEYS = {"sem_seg": "semantic", "ins_seg": "instance", "pan_seg": "panoptic"}


def _check_tasks(tasks: Sequence[str], where: str) -> Tuple[str, ...]:
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"{where}: tasks {list(tasks)} must be a non-empty subset of {TASKS}")
    return tuple(tasks)


def task_texts(task_names: Sequence[str]) -> Dict[str, str]:
    """task -> its prompt text, from MODEL.FREESEG.TASK_NAMES (semantic, instance, panoptic)."""
    if len(task_names) != len(TASKS):
        raise ValueError(
            f"MODEL.FREESEG.TASK_NAMES {list(task_names)} must give one text per task {TASKS}, "
            "in that order"
        )
    return dict(zip(TASKS, task_names))


def train_tasks_for(cfg) -> Tuple[str, ...]:
    """MODEL.FREESEG.TRAIN_TASKS, or (empty) the tasks INPUT.DATASET_MAPPER_NAME supports."""
    if cfg.MODEL.FREESEG.TRAIN_TASKS:
        return _check_tasks(cfg.MODEL.FREESEG.TRAIN_TASKS, "MODEL.FREESEG.TRAIN_TASKS")
    mapper = cfg.INPUT.DATASET_MAPPER_NAME
    if mapper not in MAPPER_TASKS:
        return ("semantic",)  # no training from this config's mapper: semantic by default
    return MAPPER_TASKS[mapper]


def test_tasks_for(cfg, dataset: Optional[str] = None) -> Tuple[str, ...]:
    """MODEL.FREESEG.TEST_TASKS, or (empty) what the test set's evaluator reads (``dataset``,
    default the first of DATASETS.TEST): all three for a panoptic set, instances for an
    instance set, else semantic."""
    if cfg.MODEL.FREESEG.TEST_TASKS:
        return _check_tasks(cfg.MODEL.FREESEG.TEST_TASKS, "MODEL.FREESEG.TEST_TASKS")
    dataset = dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset is None:
        return ("semantic",)
    kind = MetadataCatalog.get(dataset).get("evaluator_type", "")
    return {"ovseg_panoptic": TASKS, "ovseg_instance": ("instance",)}.get(kind, ("semantic",))


#: the panoptic / instance post-processing of FreeSeg's release (:func:`post_config`)
POST_DEFAULTS = {
    "temperature": 0.01,
    "object_mask_threshold": 0.0,
    "thing_score_threshold": 0.5,
    "overlap_threshold": 0.5,
    "pixel_assignment": "class",
    "instance_mode": "freeseg",
    "official_defects": False,
    "drop_label": None,
    "topk": 100,
    "align_corners": True,
}


def _official_drop_label(cfg) -> int:
    """The class index the release's panoptic inference drops: its number of training
    classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES there, the training vocabulary's size here)."""
    vocab = training_vocabulary(cfg)
    if vocab is None:
        raise ValueError(
            "MODEL.MASK_FORMER.TEST.OFFICIAL_PANOPTIC_DROP drops the class indexed by the number "
            "of training classes: give the training set (DATASETS.TRAIN)"
        )
    return len(vocab.names)


#: MODEL.MASK_FORMER.TEST.PIXEL_ASSIGNMENT and INSTANCE_MODE values
PIXEL_ASSIGNMENTS = ("class", "query")
INSTANCE_MODES = ("freeseg", "topk")


def post_config(cfg) -> Dict:
    """Test-output arguments: panoptic / instance post-processing from
    MODEL.MASK_FORMER.TEST, the mask logits' upsampling from MODEL.FREESEG."""
    t = cfg.MODEL.MASK_FORMER.TEST
    # checked here, at build, not at the first panoptic/instance test image after training
    check_choice(
        t.PIXEL_ASSIGNMENT,
        PIXEL_ASSIGNMENTS,
        "MODEL.MASK_FORMER.TEST.PIXEL_ASSIGNMENT",
        "'class' (the semantic argmax is the segment's class, FreeSeg) or 'query' (Mask2Former)",
    )
    check_choice(
        t.INSTANCE_MODE,
        INSTANCE_MODES,
        "MODEL.MASK_FORMER.TEST.INSTANCE_MODE",
        "'freeseg' (one class per query, thresholds) or 'topk' (Mask2Former's top pairs)",
    )
    return {
        "temperature": t.SCORE_TEMPERATURE or None,
        "object_mask_threshold": t.OBJECT_MASK_THRESHOLD,
        "thing_score_threshold": t.THING_SCORE_THRESHOLD,
        "overlap_threshold": t.OVERLAP_THRESHOLD,
        "pixel_assignment": t.PIXEL_ASSIGNMENT,
        "instance_mode": t.INSTANCE_MODE,
        "official_defects": t.OFFICIAL_INSTANCE_DEFECTS,
        "drop_label": _official_drop_label(cfg) if t.OFFICIAL_PANOPTIC_DROP else None,
        "topk": cfg.TEST.DETECTIONS_PER_IMAGE,
        "align_corners": cfg.MODEL.FREESEG.TEST_ALIGN_CORNERS,
    }


def ensemble_seen_classes(cfg, tests: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    """The class names the test-time CLIP ensemble weights as seen.

    The release reads the test set's own split (its metadata ``trainable_flag``,
    ``open_vocabulary_model.py:431-436``), so a test set naming its classes otherwise than the
    training set still has them seen: COCO panoptic's 17 ``*-merged`` stuff classes (e.g.
    ``tree-merged``), absent from the COCO-Stuff training names, are seen there
    (``register_coco_panoptic.py:177, 298-301``). Here: the training vocabulary's seen
    classes, plus the seen classes of the test sets ``tests`` (default DATASETS.TEST; the
    model weights each test set's inputs by its own) that declare a zero-shot split
    (metadata ``unseen_classes`` not empty); a test set without one adds nothing (its names
    the model never trained on stay unseen).
    """
    vocab = training_vocabulary(cfg)
    names = list(vocab.seen) if vocab is not None else []
    for name in cfg.DATASETS.TEST if tests is None else tests:
        meta = MetadataCatalog.get(name)
        if meta.get("unseen_classes", None):
            names += list(meta.get("seen_classes", None) or ())
    return tuple(dict.fromkeys(names))


def semantic_targets(cfg) -> str:
    """MODEL.FREESEG.SEMANTIC_TARGETS, checked: "sem_seg" needs every registered training
    set to have semantic label files (metadata ``sem_seg_root``), else the mapper's
    ``"sem_seg"`` would only repaint the segments (an unregistered name is the loader's
    error, when there is training to do)."""
    source = check_choice(
        cfg.MODEL.FREESEG.get("SEMANTIC_TARGETS", "segments"),
        SEMANTIC_TARGETS,
        "MODEL.FREESEG.SEMANTIC_TARGETS",
        "'segments': each class's segments united; 'sem_seg': the dataset's label map",
    )
    if source == "sem_seg":
        known = [n for n in cfg.DATASETS.TRAIN if n in DatasetCatalog]
        bare = [n for n in known if not MetadataCatalog.get(n).get("sem_seg_root", None)]
        if bare:
            raise ValueError(
                f"MODEL.FREESEG.SEMANTIC_TARGETS 'sem_seg' reads the semantic label files of "
                f"the training sets, and {bare} has none; set it to 'segments' or train on a "
                "set registered with its label folder"
            )
    return source


def task_targets(
    instances: Instances,
    task: str,
    is_thing: Collection[bool],
    sem_seg: Optional[torch.Tensor] = None,
    ignore_label: int = 255,
) -> Instances:
    """A sample's targets for ``task``.

    Args:
        instances (Instances): ``gt_classes`` (N,) vocabulary indices, ``gt_masks`` (N, H, W).
        task (str): one of :data:`TASKS`.
        is_thing: per vocabulary index, whether the class is a thing.
        sem_seg (Tensor, optional): (H, W) training labels of the sample; given, the
            semantic task's masks are its classes' (``ignore_label`` left out) instead of the
            segments' unions.

    Returns:
        Instances: of the same image size, ``gt_classes`` and bool ``gt_masks``.
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    classes = instances.gt_classes.long()
    masks = getattr(instances.gt_masks, "tensor", instances.gt_masks).bool()
    out = Instances(instances.image_size)
    if task == "panoptic":
        out.gt_classes, out.gt_masks = classes, masks
        return out
    if task == "instance":
        flags = torch.as_tensor(list(is_thing), dtype=torch.bool)
        if classes.numel() and int(classes.max()) >= len(flags):
            raise ValueError(
                f"target classes up to {int(classes.max())} exceed the {len(flags)}-name vocabulary"
            )
        keep = flags[classes.cpu()].to(classes.device) if classes.numel() else classes.bool()
        out.gt_classes, out.gt_masks = classes[keep], masks[keep]
        return out
    if sem_seg is not None:
        return semantic_mask_targets(sem_seg, ignore_label)
    unique = torch.unique(classes)  # sorted, as the semantic mapper's targets
    out.gt_classes = unique
    out.gt_masks = (
        torch.stack([masks[classes == c].any(dim=0) for c in unique])
        if unique.numel()
        else masks[:0]
    )
    return out
