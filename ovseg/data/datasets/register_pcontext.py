"""PASCAL Context, 59 and 60 classes: ``pcontext_sem_seg_*`` and ``pcontext60_sem_seg_*``.

PC-60 is background + the 59 classes (MaskCLIP+'s zero-shot Context, unseen classes as PC-59).
Both are written by ``datasets/prepare_pcontext_sem_seg.py`` from PASCAL in Detail's
``trainval_merged.json`` (4,996 train / 5,104 val images, as every reference uses).
"""

import os

from .common import datasets_root, register_sem_seg_split

# name prefix -> (vocabulary, label folder prefix under annotations_detectron2)
_BENCHMARKS = {
    "pcontext_sem_seg": ("pc59", "pc59"),
    "pcontext60_sem_seg": ("pc60", "pc60"),
}


def register_all_pcontext(root: str) -> None:
    """Register PASCAL Context-59 and -60 under ``<root>/VOCdevkit/VOC2010``."""
    root = os.path.join(root, "VOCdevkit", "VOC2010")
    for prefix, (vocabulary, folder) in _BENCHMARKS.items():
        for split in ("train", "val"):
            register_sem_seg_split(
                f"{prefix}_{split}",
                image_root=os.path.join(root, "JPEGImages"),
                sem_seg_root=os.path.join(root, "annotations_detectron2", f"{folder}_{split}"),
                vocabulary_name=vocabulary,
                prepare_script="prepare_pcontext_sem_seg.py",
                index_by="label",
            )


register_all_pcontext(datasets_root())
