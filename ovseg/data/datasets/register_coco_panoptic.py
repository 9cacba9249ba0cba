"""COCO panoptic and instance benchmarks with the zero-shot splits of FreeSeg and XPM.

- ``coco_2017_{train,val}_panoptic_with_sem_seg``: the standard 133-class panoptic set with
  Mask2Former's semantic labels (``panoptic_semseg_*``); FreeSeg's test set (PQ, mask AP).
- ``coco_2017_{train,val}_full_task``: FreeSeg's 171-class "full task" data
  (``register_coco_full.py``), and ``coco_2017_{train,val}_full_task_base``: its 156 seen
  classes only, unseen pixels VOID / 255 (FreeSeg's training set). FreeSeg names the val
  split ``test``. ``..._full_task[_base]_release_json``: the same files with the json FreeSeg's
  README command leaves, COCO panoptic's own segments (no ``*-merged`` stuff, no painted stuff
  segment: ``datasets/prepare_coco_panoptic.py``, ``write_release_json``).
- ``coco_2017_{train,val}_instance_48_17``: OVR-CNN's split (XPM): train holds the 48 seen
  classes' annotations (images with at least one), val the 65 classes; COCO captions attached.
  XPM's other two evaluation sets: ``coco_2017_val_instance_48_17_{unseen,seen}``
  (``instance_eval_sets.py``).
"""

import itertools
import os

from .categories import (
    COCO_48_17_CATEGORIES,
    COCO_48_17_SEEN,
    COCO_48_17_UNSEEN,
    COCO_PANOPTIC_CATEGORIES,
    COCO_STUFF_CATEGORIES,
    COCO_UNSEEN_IDS,
    subset,
)
from .common import datasets_root
from .instance_common import register_instance_split, register_panoptic_split
from .instance_eval_sets import register_instance_eval_sets


def register_all_coco_panoptic(root: str) -> None:
    """Register the COCO panoptic / instance splits under ``<root>/coco``."""
    root = os.path.join(root, "coco")
    for split in ("train", "val"):
        images = os.path.join(root, f"{split}2017")
        instances = os.path.join(root, "annotations", f"instances_{split}2017.json")
        register_panoptic_split(
            f"coco_2017_{split}_panoptic_with_sem_seg",
            categories=COCO_PANOPTIC_CATEGORIES,
            unseen_ids=COCO_UNSEEN_IDS,
            image_root=images,
            panoptic_root=os.path.join(root, f"panoptic_{split}2017"),
            panoptic_json=os.path.join(root, "annotations", f"panoptic_{split}2017.json"),
            sem_seg_root=os.path.join(root, f"panoptic_semseg_{split}2017"),
            instances_json=instances,
            prepare_script="prepare_coco_panoptic.py",
        )
        variants = (
            ("", COCO_STUFF_CATEGORIES),
            ("_base", subset(COCO_STUFF_CATEGORIES, drop_ids=COCO_UNSEEN_IDS)),
        )
        # (dataset name tail, json name tail): ovseg's json, the release's
        jsons = (("", ""), ("_release_json", "_release"))
        for (suffix, categories), (tail, release) in itertools.product(variants, jsons):
            out = os.path.join(root, "panoptic_detectron2")
            register_panoptic_split(
                f"coco_2017_{split}_full_task{suffix}{tail}",
                categories=categories,
                unseen_ids=COCO_UNSEEN_IDS,
                image_root=images,
                panoptic_root=os.path.join(out, f"{split}2017{suffix}"),
                panoptic_json=os.path.join(out, f"panoptic_{split}2017{suffix}{release}.json"),
                sem_seg_root=os.path.join(
                    root, "stuffthingmaps_panoptic_detectron2", f"{split}2017{suffix}"
                ),
                instances_json=instances if not suffix else None,
                prepare_script="prepare_coco_panoptic.py",
            )
        seen = [c for c in COCO_48_17_CATEGORIES if c["name"] in COCO_48_17_SEEN]
        unseen_ids = [c["id"] for c in COCO_48_17_CATEGORIES if c["name"] in COCO_48_17_UNSEEN]
        json_name = (
            "instances_train2017_seen_2.json"
            if split == "train"
            else ("instances_val2017_all_2.json")
        )
        register_instance_split(
            f"coco_2017_{split}_instance_48_17",
            categories=seen if split == "train" else COCO_48_17_CATEGORIES,
            unseen_ids=unseen_ids,
            image_root=images,
            json_file=os.path.join(root, "zero-shot", json_name),
            captions_json=os.path.join(root, "annotations", f"captions_{split}2017.json"),
            prepare_script="prepare_coco_instance_48_17.py",
        )
        if split == "val":  # XPM's unseen-only and seen-only evaluation sets
            register_instance_eval_sets(f"coco_2017_{split}_instance_48_17")


register_all_coco_panoptic(datasets_root())
