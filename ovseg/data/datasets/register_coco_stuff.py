"""COCO-Stuff 164k, 171 classes: ``coco_2017_{train,val}_stuff_sem_seg``.

Same layout as SAN and FreeSeg (``coco/stuffthingmaps_detectron2``), so labels converted
for them are reused; their converters skip maps with no labelled pixel, which ovseg's
``datasets/prepare_coco_stuff_sem_seg.py`` fills in (it converts only missing files).
"""

import os

from .common import datasets_root, register_sem_seg_split


def register_all_coco_stuff(root: str) -> None:
    """Register COCO-Stuff under ``<root>/coco``."""
    root = os.path.join(root, "coco")
    for split in ("train", "val"):
        register_sem_seg_split(
            f"coco_2017_{split}_stuff_sem_seg",
            image_root=os.path.join(root, f"{split}2017"),
            sem_seg_root=os.path.join(root, "stuffthingmaps_detectron2", f"{split}2017"),
            vocabulary_name="coco171",
            prepare_script="prepare_coco_stuff_sem_seg.py",
        )


register_all_coco_stuff(datasets_root())
