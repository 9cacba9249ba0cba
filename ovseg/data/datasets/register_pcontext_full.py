"""PASCAL Context, all 459 classes: ``pcontext_full_sem_seg_{train,val}``.

Labels are 16-bit PNGs with ignore 65535 (459 classes do not fit in 8 bits).
"""

import os

from .common import datasets_root, register_sem_seg_split


def register_all_pcontext_full(root: str) -> None:
    """Register PASCAL Context-459 under ``<root>/VOCdevkit/VOC2010``."""
    root = os.path.join(root, "VOCdevkit", "VOC2010")
    for split in ("train", "val"):
        register_sem_seg_split(
            f"pcontext_full_sem_seg_{split}",
            image_root=os.path.join(root, "JPEGImages"),
            sem_seg_root=os.path.join(root, "annotations_detectron2", f"pc459_{split}"),
            vocabulary_name="pc459",
            prepare_script="prepare_pcontext_full_sem_seg.py",
            index_by="label",
            ignore_label=65535,
        )


register_all_pcontext_full(datasets_root())
