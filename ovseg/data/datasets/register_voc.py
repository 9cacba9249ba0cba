"""PASCAL VOC 2012, 20 classes without background:
``voc_sem_seg_{train,train_aug,train_aug_base,val}``.

``voc_sem_seg_train`` (1,464) and ``voc_sem_seg_val`` (1,449) are VOC's own segmentation
splits and labels; ``voc_sem_seg_train_aug`` (10,582) adds the SBD labels and is the training
set of ZegCLIP and MaskCLIP+ (evaluated on ``voc_sem_seg_val``), so it is the one zero-shot
configs train on. ``voc_sem_seg_train_aug_base`` is FreeSeg's zero-shot training set
(official ``voc_base_sem_seg_train``, ``register_voc_seg.py:107-123``): ``train_aug`` with the
unseen classes' pixels ignored and the images without a seen pixel left out.
``voc21_sem_seg_val`` is VOC-21 (background + 20, vocabulary ``voc21``), evaluated with a
background by a threshold (TEST.BACKGROUND_THRESHOLD). ``JPEGImages`` holds every VOC image,
so the label folder written by the prepare script defines each split.
"""

import os

from .common import datasets_root, register_sem_seg_split

# split name -> (folder under annotations_detectron2, how to prepare it)
_SPLITS = {
    "train": ("train", "prepare_voc_sem_seg.py"),
    "train_aug": ("train_aug", "prepare_voc_sem_seg.py with SegmentationClassAug (SBD) in place"),
    "train_aug_base": (
        "train_aug_base",
        "prepare_voc_sem_seg.py with SegmentationClassAug (SBD) in place",
    ),
    "val": ("val", "prepare_voc_sem_seg.py"),
}


def register_all_voc(root: str) -> None:
    """Register VOC-20 under ``<root>/VOCdevkit/VOC2012``."""
    root = os.path.join(root, "VOCdevkit", "VOC2012")
    for split, (folder, prepare) in _SPLITS.items():
        register_sem_seg_split(
            f"voc_sem_seg_{split}",
            image_root=os.path.join(root, "JPEGImages"),
            sem_seg_root=os.path.join(root, "annotations_detectron2", folder),
            vocabulary_name="voc20",
            prepare_script=prepare,
            index_by="label",
        )
    register_sem_seg_split(
        "voc21_sem_seg_val",
        image_root=os.path.join(root, "JPEGImages"),
        sem_seg_root=os.path.join(root, "annotations_detectron2", "val21"),
        vocabulary_name="voc21",
        prepare_script="prepare_voc_sem_seg.py",
        index_by="label",
    )


register_all_voc(datasets_root())
