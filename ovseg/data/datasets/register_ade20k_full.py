"""ADE20K-Full, 847 classes (``ADE20K_2021_17_01``): ``ade20k_full_sem_seg_{train,val}``.

Labels are 16-bit PNGs with ignore 65535, as 847 classes do not fit in 8 bits (SAN and
CAT-Seg store the same ids as 16-bit TIFFs).
"""

import os

from .common import datasets_root, register_sem_seg_split


def register_all_ade20k_full(root: str) -> None:
    """Register ADE20K-847 under ``<root>/ADE20K_2021_17_01`` (as written by the prepare script)."""
    root = os.path.join(root, "ADE20K_2021_17_01")
    for split, dirname in (("train", "training"), ("val", "validation")):
        register_sem_seg_split(
            f"ade20k_full_sem_seg_{split}",
            image_root=os.path.join(root, "images_detectron2", dirname),
            sem_seg_root=os.path.join(root, "annotations_detectron2", dirname),
            vocabulary_name="ade847",
            prepare_script="prepare_ade20k_full_sem_seg.py",
            ignore_label=65535,
        )


register_all_ade20k_full(datasets_root())
