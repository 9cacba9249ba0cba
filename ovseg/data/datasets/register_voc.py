"""PASCAL VOC 2012, 20 classes without background: ``voc_sem_seg_{train,val}``.

``JPEGImages`` holds every VOC image, so the label folder written by the prepare script
defines each split.
"""

import os

from .common import datasets_root, register_sem_seg_split


def register_all_voc(root: str) -> None:
    """Register VOC-20 under ``<root>/VOCdevkit/VOC2012``."""
    root = os.path.join(root, "VOCdevkit", "VOC2012")
    for split in ("train", "val"):
        register_sem_seg_split(
            f"voc_sem_seg_{split}",
            image_root=os.path.join(root, "JPEGImages"),
            sem_seg_root=os.path.join(root, "annotations_detectron2", split),
            vocabulary_name="voc20",
            prepare_script="prepare_voc_sem_seg.py",
            index_by="label",
        )


register_all_voc(datasets_root())
