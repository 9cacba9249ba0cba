"""Category lists (``{"id", "name", "isthing"}``) and zero-shot splits of the panoptic and
instance benchmarks.

- COCO panoptic, 133 classes: detectron2's ``builtin_meta.COCO_CATEGORIES`` (panopticapi's).
- COCO-Stuff, 171 classes, as FreeSeg's ``register_coco_full.py``: COCO ids 1..182 less the
  11 unused, names of ``coco171.json``, things = ids <= 90.
- FreeSeg's 15 unseen COCO classes (``datasets/prepare_coco_alldata.py:216`` in
  bytedance/FreeSeg, stuffthingmap ids; dataset id = map id + 1, the list of its
  ``panoptic_seg_evaluation.py:180``); in the 133-class panoptic set only 11 of them exist.
- OVR-CNN's COCO 48/17 split (``mscoco_{seen,unseen}_classes.json`` in alirezazareian/ovr-cnn),
  the split XPM reports on; the other 15 COCO classes are dropped.
- ADE20K-150: classes of ``ade150.json`` with ids 0..149; things are the 100 classes of ADE's
  instance annotations (the SceneParse150 column of Mask2Former's
  ``datasets/ade20k_instance_catid_mapping.txt``); FreeSeg's 15 novel ids
  (``prepare_ade20k_pan_seg_novel.py``), of which 11 are things.
"""

from __future__ import annotations

from ...vocab import Vocabulary

__all__ = [
    "ADE20K_CATEGORIES",
    "ADE20K_INSTANCE_TO_SEMANTIC",
    "ADE20K_UNSEEN_IDS",
    "COCO_48_17_CATEGORIES",
    "COCO_48_17_UNSEEN",
    "COCO_PANOPTIC_CATEGORIES",
    "COCO_STUFF_CATEGORIES",
    "COCO_UNSEEN_IDS",
    "subset",
]

COCO_UNSEEN_IDS = (21, 25, 33, 34, 41, 57, 87, 100, 106, 124, 145, 148, 149, 169, 172)
# stuffthingmaps values (COCO id - 1) of no COCO-Stuff class
_COCO_UNUSED_MAP_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def _coco_panoptic() -> list[dict]:
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [{"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in COCO_CATEGORIES]


def _coco_stuff() -> list[dict]:
    ids = [i + 1 for i in range(182) if i not in _COCO_UNUSED_MAP_IDS]
    names = Vocabulary.builtin("coco171").names
    return [{"id": i, "name": n, "isthing": int(i <= 90)} for i, n in zip(ids, names)]


COCO_PANOPTIC_CATEGORIES = _coco_panoptic()
COCO_STUFF_CATEGORIES = _coco_stuff()

COCO_48_17_SEEN = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird",
    "horse", "sheep", "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee",
    "skis", "kite", "surfboard", "bottle", "fork", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "chair", "bed", "toilet",
    "tv", "laptop", "mouse", "remote", "microwave", "oven", "toaster", "refrigerator", "book",
    "clock", "vase", "toothbrush",
)  # fmt: skip
COCO_48_17_UNSEEN = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
    "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors",
)  # fmt: skip
COCO_48_17_CATEGORIES = [
    c
    for c in COCO_PANOPTIC_CATEGORIES
    if c["isthing"] and c["name"] in COCO_48_17_SEEN + COCO_48_17_UNSEEN
]

# ADE instance category (1..100) -> SceneParse150 id (1..150), Mask2Former's mapping file
ADE20K_INSTANCE_TO_SEMANTIC = dict(
    enumerate(
        (
            8,
            9,
            11,
            13,
            15,
            16,
            19,
            20,
            21,
            23,
            24,
            25,
            28,
            31,
            32,
            33,
            34,
            36,
            37,
            38,
            39,
            40,
            42,
            43,
            44,
            45,
            46,
            48,
            50,
            51,
            54,
            56,
            57,
            58,
            59,
            63,
            65,
            66,
            67,
            68,
            70,
            71,
            72,
            73,
            74,
            75,
            76,
            77,
            79,
            81,
            82,
            83,
            84,
            86,
            87,
            88,
            89,
            90,
            91,
            93,
            94,
            96,
            98,
            99,
            103,
            104,
            105,
            108,
            109,
            111,
            112,
            113,
            116,
            117,
            119,
            120,
            121,
            122,
            124,
            125,
            126,
            127,
            128,
            130,
            131,
            133,
            134,
            135,
            136,
            137,
            138,
            139,
            140,
            143,
            144,
            145,
            147,
            148,
            149,
            150,
        ),  # fmt: skip
        start=1,
    )
)
ADE20K_UNSEEN_IDS = (9, 15, 30, 37, 49, 60, 74, 81, 89, 99, 112, 128, 136, 143, 149)
_ADE_THINGS = {v - 1 for v in ADE20K_INSTANCE_TO_SEMANTIC.values()}
ADE20K_CATEGORIES = [
    {"id": i, "name": n, "isthing": int(i in _ADE_THINGS)}
    for i, n in enumerate(Vocabulary.builtin("ade150").names)
]


def subset(categories: list[dict], *, things_only=False, drop_ids=()) -> list[dict]:
    """The categories that are things (if asked) and not among ``drop_ids``, in order."""
    return [
        c for c in categories if (c["isthing"] or not things_only) and c["id"] not in set(drop_ids)
    ]
