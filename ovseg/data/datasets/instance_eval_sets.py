"""XPM's three instance evaluation sets, registered as datasets derived from a split.

XPM (hbdat/cvpr22_cross_modal_pseudo_labeling @b460423) tests on three datasets
(``configs/coco_cap_det/student_teacher_mask_rcnn_uncertainty.yaml:44``:
``coco_zeroshot_val``, ``coco_not_zeroshot_val``, ``coco_generalized_zeroshot_val``), made by
``preprocess/coco/construct_coco_json.py:262-282``: each keeps the categories of its split
(unseen 17, seen 48, all 65), their annotations, and the images with at least one of them.
The model's classifier is the set's categories (its class embeddings come from the set's
json), so an unseen-only result never competes with seen names; AP50 is reported per split
(``coco_eval.py:377-404``).

Here, for an instance split ``<name>`` with unseen classes, ``<name>_unseen`` and
``<name>_seen`` are registered (``<name>`` itself is the generalized set): their
``stuff_classes`` are the set's names only, so the test mapper gives every input that
vocabulary (with MODEL.OVSEG.TEST_VOCABULARY empty) and the meta-architecture predicts over
it; their evaluator (``ovseg_instance``) scores the set's categories on the set's images.
List all three in DATASETS.TEST (:func:`instance_eval_set_names`).
"""

from __future__ import annotations

import functools
from typing import Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .common import register_split
from .instance_common import category_metadata

__all__ = ["INSTANCE_EVAL_SETS", "instance_eval_set_names", "register_instance_eval_sets"]

# set -> the dataset-name suffix; the generalized set is the split itself
INSTANCE_EVAL_SETS: Dict[str, str] = {"unseen": "_unseen", "seen": "_seen", "generalized": ""}


def instance_eval_set_names(name: str) -> Tuple[str, str, str]:
    """The (unseen-only, seen-only, generalized) dataset names of an instance split."""
    return tuple(name + INSTANCE_EVAL_SETS[s] for s in ("unseen", "seen", "generalized"))


def _load_subset(base: str, remap: Dict[int, int]) -> List[dict]:
    """The base split's images holding an annotation of the set (crowd ones count), with only
    those annotations, their categories renumbered into the set."""
    out = []
    for d in DatasetCatalog.get(base):
        anns = [
            {**a, "category_id": remap[a["category_id"]]}
            for a in d.get("annotations", [])
            if a["category_id"] in remap
        ]
        if anns:
            out.append({**d, "annotations": anns})
    return out


def register_instance_eval_sets(name: str) -> List[str]:
    """Register ``<name>_unseen`` and ``<name>_seen`` from a registered instance split.

    Args:
        name (str): a split registered by ``register_instance_split`` with unseen classes.

    Returns:
        list[str]: the registered names (none when the split has no unseen classes).
    """
    meta = MetadataCatalog.get(name)
    unseen = set(meta.get("unseen_classes", None) or ())
    if not unseen:
        return []
    names = meta.stuff_classes
    ids = meta.thing_dataset_id_to_contiguous_id
    registered = []
    for which in ("unseen", "seen"):
        chosen = sorted(d for d, k in ids.items() if (names[k] in unseen) == (which == "unseen"))
        categories = [{"id": d, "name": names[ids[d]], "isthing": 1} for d in chosen]
        remap = {ids[d]: i for i, d in enumerate(chosen)}
        derived = name + INSTANCE_EVAL_SETS[which]
        register_split(
            derived,
            functools.partial(_load_subset, name, remap),
            json_file=meta.json_file,
            image_root=meta.get("image_root", None),
            evaluator_type="ovseg_instance",
            ignore_label=meta.get("ignore_label", 255),
            eval_set=which,
            eval_base_dataset=name,
            **category_metadata(categories, [d for d in chosen if which == "unseen"]),
        )
        registered.append(derived)
    return registered
