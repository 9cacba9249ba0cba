"""PASCAL Context, 59 classes: ``pcontext_sem_seg_{train,val}``."""

import os

from .common import datasets_root, register_sem_seg_split


def register_all_pcontext(root: str) -> None:
    """Register PASCAL Context-59 under ``<root>/VOCdevkit/VOC2010``."""
    root = os.path.join(root, "VOCdevkit", "VOC2010")
    for split in ("train", "val"):
        register_sem_seg_split(
            f"pcontext_sem_seg_{split}",
            image_root=os.path.join(root, "JPEGImages"),
            sem_seg_root=os.path.join(root, "annotations_detectron2", f"pc59_{split}"),
            vocabulary_name="pc59",
            prepare_script="prepare_pcontext_sem_seg.py",
            index_by="label",
        )


register_all_pcontext(datasets_root())
