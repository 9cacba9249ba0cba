"""Point training dataset dicts at a pseudo-label store (``DATASETS.PSEUDO_LABELS``).

The dataset mapper then reads each "pseudo_sem_seg_file_name", translates the store's
labels into its training vocabulary (:func:`store_label_map`) and returns "pseudo_sem_seg",
transformed with the same augmentations as the image and "sem_seg".
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from detectron2.data import MetadataCatalog, get_detection_dataset_dicts

from .instance_store import InstancePseudoLabelStore, attach_pseudo_instances, store_kind
from .spec import expected_pseudo_labels
from .store import GENERATE_HINT, PseudoLabelStore, image_id_of

__all__ = [
    "attach_pseudo_labels",
    "pseudo_labelled_dataset_dicts",
    "store_class_count",
    "store_label_map",
]

logger = logging.getLogger(__name__)


def attach_pseudo_labels(
    dataset_dicts: Sequence[Mapping[str, Any]], store: PseudoLabelStore
) -> List[Dict[str, Any]]:
    """Copies of ``dataset_dicts``, each with "pseudo_sem_seg_file_name" from ``store`` and
    "pseudo_sem_seg_sha256", the label file's recorded digest.

    Args:
        dataset_dicts: detectron2 dataset dicts ("image_id" or "file_name" gives the key).
        store (PseudoLabelStore): holds a label for every image.

    Returns:
        list[dict]: new dicts; the given ones are left unchanged.
    """
    out = []
    missing = []
    done = set(store.image_ids())  # one directory listing, not a stat per image
    for d in dataset_dicts:
        image_id = image_id_of(d)
        checksum = store.label_checksum(image_id)
        if image_id not in done or checksum is None:
            missing.append((image_id, d.get("file_name")))
            continue
        # the mapper verifies the file against it (a corrupt one is named, not decoded)
        path = store.path_for(image_id)
        out.append({**d, "pseudo_sem_seg_file_name": path, "pseudo_sem_seg_sha256": checksum})
    if missing:
        image_id, file_name = missing[0]
        dataset = store.manifest.get("dataset") or "<dataset>"
        command = store.manifest.get("command") or GENERATE_HINT.replace("<dataset>", dataset)
        raise FileNotFoundError(
            f"Pseudo-label store {store.root!r} has no label for image_id {image_id!r} "
            f"({file_name}) with a recorded checksum; {len(missing)} of {len(dataset_dicts)} "
            "images lack one. Generate or finish them (images already done are skipped) "
            f"with: {command}"
        )
    return out


def pseudo_labelled_dataset_dicts(cfg, dataset_name: Optional[Union[str, Sequence[str]]] = None):
    """The training dataset dicts, with pseudo-labels attached when a store is configured.

    Without ``DATASETS.PSEUDO_LABELS`` this is detectron2's
    ``get_detection_dataset_dicts(names, filter_empty=False)``. With it, the store is opened
    and refused when it was made for another dataset or, for a student that declares what
    it expects (:func:`~ovseg.pseudo.spec.expected_pseudo_labels`), over other classes or at
    another threshold; then every dict gets its label file (an instance store's
    records are attached as "pseudo_instances_file_name").

    Args:
        cfg (CfgNode): the training config.
        dataset_name: a registered dataset name (or list); default ``cfg.DATASETS.TRAIN``.

    Returns:
        list[dict]
    """
    names = dataset_name if dataset_name is not None else cfg.DATASETS.TRAIN
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty; name a registered training dataset.")
    dicts = get_detection_dataset_dicts(names, filter_empty=False)
    root = cfg.DATASETS.PSEUDO_LABELS
    if not root:
        return dicts
    if len(names) != 1:
        raise ValueError(
            f"DATASETS.PSEUDO_LABELS={root!r} holds the labels of one dataset, but training "
            f"uses {names}; train on one dataset or leave DATASETS.PSEUDO_LABELS empty"
        )
    if store_kind(root) == InstancePseudoLabelStore.KIND:  # XPM's per-image instances
        store = InstancePseudoLabelStore.open(root, expect={"dataset": names[0]})
        logger.info(f"Attaching pseudo instances from {store!r} to {len(dicts)} images")
        return attach_pseudo_instances(dicts, store)
    store = PseudoLabelStore.open(root, expect={"dataset": names[0]})
    ignore_label = MetadataCatalog.get(names[0]).get("ignore_label", 255)
    if store.ignore_value != ignore_label:
        # the mapper pads pseudo-labels with the dataset's ignore label: the two must agree
        raise ValueError(
            f"Pseudo-label store {root!r} marks ignored pixels with {store.ignore_value} "
            f"({len(store.vocabulary)} classes) but dataset {names[0]!r} uses ignore_label "
            f"{ignore_label}; make the store's vocabulary fit the dataset's label type "
            "(<= 255 classes for 255, more for 65535)"
        )
    spec = expected_pseudo_labels(cfg)
    if spec is not None:
        spec.check_store(store)
    logger.info(f"Attaching pseudo-labels from {store!r} to {len(dicts)} images of {names[0]}")
    return attach_pseudo_labels(dicts, store)


def store_label_map(cfg, names: Sequence[str], ignore_label: int) -> Optional[np.ndarray]:
    """The table translating the configured store's labels into indices of ``names``.

    Args:
        cfg (CfgNode): ``DATASETS.PSEUDO_LABELS`` names the store ("" = none).
        names: the training vocabulary the mapper labels samples with.
        ignore_label (int): its ignore label (store classes outside ``names`` map to it).

    Returns:
        np.ndarray or None: ``table[store label]`` (see :meth:`PseudoLabelStore.label_map_to`);
        None without a store.
    """
    root = cfg.DATASETS.PSEUDO_LABELS
    if not root:
        return None
    return PseudoLabelStore.open(root).label_map_to(names, ignore_label)


def store_class_count(cfg) -> Optional[int]:
    """The number of classes of the configured store's labels (its vocabulary size), or None
    without a store: a stored value outside them that is not the ignore value is an error."""
    root = cfg.DATASETS.PSEUDO_LABELS
    return len(PseudoLabelStore.open(root).vocabulary) if root else None
