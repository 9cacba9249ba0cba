"""Shared registration of semantic-segmentation benchmarks: one split = image folder + label folder.

Every ``register_<dataset>.py`` calls :func:`register_sem_seg_split` for each of its splits.
Nothing is read from disk at registration time: a missing dataset only fails when its dicts
are requested (``DatasetCatalog.get``), with the path that was looked for and how to prepare it.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from ...utils.colors import deterministic_colors
from ...vocab import Vocabulary
from .catalog import closest_datasets, register_split
from .region_eval_sets import register_region_eval_set

__all__ = [
    "DATASETS_README",
    "closest_datasets",
    "datasets_root",
    "load_sem_seg_split",
    "register_sem_seg_split",
]

logger = logging.getLogger(__name__)

VOCABULARY_DIR = Path(__file__).resolve().parent.parent / "vocabularies"
DATASETS_README = "datasets/README.md"


def datasets_root() -> str:
    """Return the dataset root: ``$DETECTRON2_DATASETS``, or ``datasets`` (detectron2's default)."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def _missing(what: str, path: str, dataset_name: str, prepare_script: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"Dataset {dataset_name!r}: {what} {path} does not exist. Set DETECTRON2_DATASETS to the "
        f"folder holding the datasets (now {datasets_root()!r}) and prepare it as described in "
        f"{DATASETS_README} (python datasets/{prepare_script})."
    )


def _list_files(folder: str, ext: str) -> dict[str, str]:
    """Map file stem -> path for the files of ``folder`` (not recursive) ending in ``ext``."""
    with os.scandir(folder) as entries:
        return {
            e.name[: -len(ext)]: e.path
            for e in entries
            if e.name.endswith(ext) and not e.name.startswith(".") and e.is_file()
        }


def load_sem_seg_split(
    *,
    dataset_name: str,
    image_root: str,
    sem_seg_root: str,
    image_ext: str = ".jpg",
    gt_ext: str = ".png",
    index_by: str = "image",
    prepare_script: str,
) -> list[dict]:
    """List the samples of one split as detectron2 dicts, matching images and labels by stem.

    Args:
        dataset_name (str): registered name, used in error messages.
        image_root (str): folder of the images.
        sem_seg_root (str): folder of the label PNGs written by ``datasets/prepare_*.py``.
        image_ext, gt_ext (str): file endings of images and labels, with the dot.
        index_by (str): ``"image"`` when the image folder holds exactly this split (ADE20K,
            COCO), so every image must have a label; ``"label"`` when the image folder is shared
            by several splits (``VOC*/JPEGImages``) and the label folder defines the split, so
            every label must have an image.
        prepare_script (str): the script that creates the labels, named in error messages.

    Returns:
        list[dict]: ``{"file_name", "sem_seg_file_name", "image_id"}`` per sample, sorted by
        stem.
    """
    if index_by not in ("image", "label"):
        raise ValueError(f"index_by must be 'image' or 'label', got {index_by!r}")
    for what, path in (("label folder", sem_seg_root), ("image folder", image_root)):
        if not os.path.isdir(path):
            raise _missing(what, path, dataset_name, prepare_script)
    images = _list_files(image_root, image_ext)
    labels = _list_files(sem_seg_root, gt_ext)
    keys = images if index_by == "image" else labels
    if not keys:
        folder, ext = (image_root, image_ext) if index_by == "image" else (sem_seg_root, gt_ext)
        raise FileNotFoundError(
            f"Dataset {dataset_name!r}: no *{ext} files in {folder}. See {DATASETS_README} "
            f"(python datasets/{prepare_script})."
        )
    dicts = []
    for stem in sorted(keys):
        if stem not in labels:
            raise FileNotFoundError(
                f"Dataset {dataset_name!r}: image {images[stem]} has no label file "
                f"{os.path.join(sem_seg_root, stem + gt_ext)}. Re-run python datasets/"
                f"{prepare_script} (it skips files already converted); see {DATASETS_README}."
            )
        if stem not in images:
            raise FileNotFoundError(
                f"Dataset {dataset_name!r}: label {labels[stem]} has no image "
                f"{os.path.join(image_root, stem + image_ext)}. Check the image download; see "
                f"{DATASETS_README}."
            )
        dicts.append(
            {"file_name": images[stem], "sem_seg_file_name": labels[stem], "image_id": stem}
        )
    logger.info("Loaded %d images of %s from %s", len(dicts), dataset_name, image_root)
    return dicts


def register_sem_seg_split(
    name: str,
    *,
    image_root: str,
    sem_seg_root: str,
    vocabulary_name: str,
    prepare_script: str,
    image_ext: str = ".jpg",
    gt_ext: str = ".png",
    index_by: str = "image",
    ignore_label: int = 255,
) -> None:
    """Register one semantic-segmentation split in ``DatasetCatalog`` and ``MetadataCatalog``.

    A name that is already registered is replaced: detectron2 itself registers
    ``ade20k_sem_seg_{train,val}`` (builtin.py, plain ``sem_seg`` metadata without our keys),
    and ``MetadataCatalog.set`` refuses to change an existing key, so ours must remove it to
    win; re-registering under a new root (tests, notebooks) needs the same.

    Args:
        name (str): dataset name, e.g. ``"voc_sem_seg_val"``.
        image_root, sem_seg_root (str): image and label folders (see :func:`load_sem_seg_split`).
        vocabulary_name (str): builtin vocabulary giving ``stuff_classes`` and the unseen split.
        prepare_script (str): file name under ``datasets/`` that creates the labels.
        image_ext, gt_ext (str): file endings, with the dot.
        index_by (str): ``"image"`` or ``"label"`` (see :func:`load_sem_seg_split`).
        ignore_label (int): label value of unlabelled pixels; 255, or 65535 for the 16-bit
            labels of vocabularies with more than 255 classes.
    """
    vocab = Vocabulary.builtin(vocabulary_name)
    classes = list(vocab.names)
    if ignore_label < len(classes):
        raise ValueError(
            f"{name}: ignore_label {ignore_label} collides with a class id of the "
            f"{len(classes)}-class vocabulary {vocabulary_name!r}"
        )
    unseen = set(vocab.unseen)
    register_split(
        name,
        functools.partial(
            load_sem_seg_split,
            dataset_name=name,
            image_root=image_root,
            sem_seg_root=sem_seg_root,
            image_ext=image_ext,
            gt_ext=gt_ext,
            index_by=index_by,
            prepare_script=prepare_script,
        ),
        stuff_classes=list(classes),
        stuff_colors=deterministic_colors(len(classes)),
        ignore_label=ignore_label,
        evaluator_type="ovseg_sem_seg",
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        unseen_classes=[c for c in classes if c in unseen],
        seen_classes=[c for c in classes if c not in unseen],
        vocabulary_name=vocabulary_name,
        prepare_script=prepare_script,  # named when one of its labels cannot be read
    )
    register_region_eval_set(name)  # "<name>_regions": FreeSeg's prompt-stage test set
