"""ADE20K-150 (SceneParsing, ``ADEChallengeData2016``): ``ade20k_sem_seg_{train,val}``.

detectron2 registers the same names in its builtin.py; ours replace them (see
:func:`~ovseg.data.datasets.common.register_sem_seg_split`) to add the vocabulary metadata.
"""

import os

from .common import datasets_root, register_sem_seg_split


def register_all_ade20k(root: str) -> None:
    """Register ADE20K-150 under ``<root>/ADEChallengeData2016``."""
    root = os.path.join(root, "ADEChallengeData2016")
    for split, dirname in (("train", "training"), ("val", "validation")):
        register_sem_seg_split(
            f"ade20k_sem_seg_{split}",
            image_root=os.path.join(root, "images", dirname),
            sem_seg_root=os.path.join(root, "annotations_detectron2", dirname),
            vocabulary_name="ade150",
            prepare_script="prepare_ade20k_sem_seg.py",
        )


register_all_ade20k(datasets_root())
