"""ADE20K-150 panoptic and instance sets (Mask2Former's conversion of ADE's instance
annotations) with FreeSeg's 135/15 split.

``ade20k_panoptic_{train,val}`` (150 classes; mIoU labels of ``ade20k_sem_seg_*``, mask AP
from ``ade20k_instance_*``), ``ade20k_instance_{train,val}`` (100 thing classes, 11 unseen)
and the training sets without the unseen classes, ``ade20k_panoptic_train_base`` (135) and
``ade20k_instance_train_base`` (89), as FreeSeg's ``prepare_ade20k_{pan,ins}_seg_novel.py``
write them; the base panoptic set's semantic labels are FreeSeg's ``training_base`` (135
classes, ``prepare_ade20k_sem_seg_novel.py``).
"""

import os

from .categories import ADE20K_CATEGORIES, ADE20K_UNSEEN_IDS, subset
from .common import datasets_root
from .instance_common import register_instance_split, register_panoptic_split


def register_all_ade20k_panoptic(root: str) -> None:
    """Register the ADE20K panoptic / instance splits under ``<root>/ADEChallengeData2016``."""
    root = os.path.join(root, "ADEChallengeData2016")
    script = "prepare_ade20k_panoptic.py"
    things = subset(ADE20K_CATEGORIES, things_only=True)
    for split, dirname in (("train", "training"), ("val", "validation")):
        images = os.path.join(root, "images", dirname)
        for suffix in ("", "_base") if split == "train" else ("",):
            drop = ADE20K_UNSEEN_IDS if suffix else ()
            instances = os.path.join(root, f"ade20k_instance_{split}{suffix}.json")
            register_panoptic_split(
                f"ade20k_panoptic_{split}{suffix}",
                categories=subset(ADE20K_CATEGORIES, drop_ids=drop),
                unseen_ids=ADE20K_UNSEEN_IDS,
                image_root=images,
                panoptic_root=os.path.join(root, f"ade20k_panoptic_{split}{suffix}"),
                panoptic_json=os.path.join(root, f"ade20k_panoptic_{split}{suffix}.json"),
                sem_seg_root=os.path.join(root, "annotations_detectron2", dirname + suffix),
                instances_json=None if suffix else instances,
                prepare_script=script,
            )
            register_instance_split(
                f"ade20k_instance_{split}{suffix}",
                categories=subset(things, drop_ids=drop),
                unseen_ids=ADE20K_UNSEEN_IDS,
                image_root=images,
                json_file=instances,
                prepare_script=script,
            )


register_all_ade20k_panoptic(datasets_root())
