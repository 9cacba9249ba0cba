"""Config keys of XPM's data side: its caption pseudo instances (ovseg/pseudo/instances.py,
ovseg/engine/pseudo_instances.py) and its training mapper (ovseg_xpm_instance).

Keys are added to ``MODEL.XPM`` whether or not the model side made that node first, and a
key already there keeps its value, so the two sides' ``add_*`` functions may run in any
order.
"""

from detectron2.config import CfgNode as CN

# key -> (default, meaning); the meanings are the comments of the keys
XPM_DATA_KEYS = {
    # the registered meta-architecture of the proposal/mask teacher that labels captions
    "TEACHER_META_ARCHITECTURE": "XPMTeacher",
    # its trained weights (a checkpoint of a teacher run); "" = MODEL.WEIGHTS when the
    # config's own META_ARCHITECTURE is the teacher's
    "TEACHER_WEIGHTS": "",
    # region embedding of a proposal: "crop" (its mask cut out, outside = pixel mean, through
    # CLIP's image encoder), "pool" (mask pooling of CLIP's dense features; cheaper) or
    # "teacher" (the XPM teacher's projected RoI feature, as XPM matches its detector's
    # region embeddings, st_generalized_rcnn.py:226-247; every proposal a candidate)
    "REGION_EMBEDDING": "crop",
    # the text matched to regions: "noun" (the caption phrase, as XPM embeds each noun) or
    # "class" (the phrase's class name)
    "PSEUDO_TEXT": "noun",
    # proposal mask probability at and above which a pixel is in the pseudo mask (XPM 0.5)
    "PSEUDO_MASK_THRESHOLD": 0.5,
    # the training mapper drops pseudo instances scoring below this (0 = keep all, as XPM;
    # the generation tool's --threshold cuts when writing instead)
    "PSEUDO_SCORE_THRESHOLD": 0.0,
    # caption synonyms: "auto" (XPM's LVIS lists plus ours, the COCO names among them, when
    # every name is a COCO thing, else the class names alone), "coco" (the same, or an
    # error), "coco_official" (XPM's LVIS lists alone), "none" (class names alone)
    "CAPTION_SYNONYMS": "auto",
    # the classes caption nouns are matched to and the student's pseudo pass classifies over:
    # "train" (the training vocabulary's names) or "lvis" (XPM's: the 1203 LVIS categories
    # with their synonyms, st_generalized_rcnn.py:71-75, 329-330, parser.py:28-74; its
    # CAPTION_SYNONYMS must be "auto" or "coco_official", both meaning the LVIS lists alone)
    "CAPTION_VOCABULARY": "train",
    # where the XPM student's caption pseudo instances come from: "store" (DATASETS.
    # PSEUDO_LABELS, made once by tools/generate_pseudo_labels.py on test-size images) or
    # "online" (as officially, st_generalized_rcnn.py:218-323: each training step, the
    # student's frozen copy of the teacher's RoI heads labels the augmented training image
    # on the frozen backbone and RPN; needs TEACHER_WEIGHTS and REGION_EMBEDDING "teacher")
    "PSEUDO_LABEL_SOURCE": "store",
}


def add_xpm_data_config(cfg: CN) -> None:
    """MODEL.XPM keys of the pseudo-instance generation and the XPM training mapper."""
    if "XPM" not in cfg.MODEL:
        cfg.MODEL.XPM = CN()
    for key, value in XPM_DATA_KEYS.items():
        if key not in cfg.MODEL.XPM:
            setattr(cfg.MODEL.XPM, key, value)
