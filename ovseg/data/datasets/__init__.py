"""Dataset registrations: importing this package registers every benchmark split.

Registration reads ``$DETECTRON2_DATASETS`` (default ``datasets``) at import and touches no
file; see ``datasets/README.md`` for the expected trees.
"""

from . import (  # noqa: F401
    register_ade20k,
    register_ade20k_full,
    register_ade20k_panoptic,
    register_coco20i,
    register_coco_panoptic,
    register_coco_stuff,
    register_fss1000,
    register_pascal5i,
    register_pcontext,
    register_pcontext_full,
    register_toy_world,
    register_voc,
)
from .common import register_sem_seg_split  # noqa: F401
