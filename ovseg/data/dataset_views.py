"""Pictures of what a student learns from: a dataset's ground truth and a pseudo-label store.

Behind ``tools/visualize_dataset.py`` (ground truth over each image, unseen classes hatched)
and ``tools/visualize_pseudo_labels.py`` (image | ground truth | pseudo-label | confidence,
with the pixel agreement of the pseudo-labels with the truth). The overlays are
:func:`ovseg.utils.visualization.draw_semantic`'s.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
from matplotlib import colormaps

from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.structures import Instances

from ..pseudo import PseudoLabelStore, image_id_of
from ..utils.colors import deterministic_colors
from ..utils.io import make_output_folder
from ..utils.visualization import (
    draw_semantic,
    overlay_scale,
    panel_row,
    read_label,
    save_image,
    vocabulary_metadata,
)
from ..vocab import normalize_name
from .datasets.catalog import closest_datasets
from .image_io import read_image

__all__ = [
    "agreement",
    "dataset_metadata",
    "draw_comparison",
    "draw_ground_truth",
    "store_metadata",
    "write_ground_truth_views",
    "write_pseudo_label_views",
]

logger = logging.getLogger(__name__)


def dataset_metadata(name: str) -> Dict[str, Any]:
    """What drawing a registered dataset's labels needs, with clear errors.

    Returns:
        dict: "metadata" (Metadata with stuff_classes/stuff_colors), "ignore_label" (int),
        "unseen" (tuple of the unseen class names).
    """
    if name not in DatasetCatalog.list():
        raise ValueError(
            f"dataset {name!r} is not registered; {closest_datasets(name)}. Give a registered name "
            "(datasets/README.md lists them)"
        )
    meta = MetadataCatalog.get(name)
    classes = meta.get("stuff_classes", None)
    if not classes:
        raise ValueError(
            f"dataset {name!r} has no stuff_classes metadata to name its labels: it is not one "
            "of ovseg's semantic, panoptic or instance sets (a detectron2 detection set such as "
            "coco_2017_val has none); datasets/README.md lists the ones this tool draws"
        )
    colors = meta.get("stuff_colors", None)
    return {
        "metadata": vocabulary_metadata(classes, colors, name=name),
        "ignore_label": int(meta.get("ignore_label", 255)),
        "unseen": tuple(meta.get("unseen_classes", None) or ()),
    }


def draw_ground_truth(
    dataset_dict: Mapping[str, Any], info: Mapping[str, Any], min_size: int = 0
) -> Tuple[np.ndarray, Dict[str, str]]:
    """One image with its ground truth drawn.

    Args:
        dataset_dict: {"file_name", "sem_seg_file_name", ...}.
        info: from :func:`dataset_metadata`.
        min_size (int): enlarge the drawing until its short side reaches this.

    Returns:
        tuple: (picture (h, w, 3) uint8 RGB, {class name: "seen"/"unseen"} of the classes
        present).
    """
    if "pan_seg_file_name" in dataset_dict or "annotations" in dataset_dict:
        return _draw_segments(dataset_dict, info, min_size)
    if "sem_seg_file_name" not in dataset_dict:
        raise ValueError(f"{dataset_dict.get('file_name')}: the dataset dict has no label file")
    names = info["metadata"].stuff_classes
    if "episode_class" in dataset_dict:
        image = read_image(dataset_dict["file_name"], format="RGB", exif_orientation=False)
        # the episode's ignore (255) is a class id of FSS-1000's 1000: one no class takes
        info = {**info, "ignore_label": max(info["ignore_label"], len(names))}
        label = _episode_label(dataset_dict, info, image.shape[:2])
    else:
        image = read_image(dataset_dict["file_name"], format="RGB")
        label = read_label(dataset_dict["sem_seg_file_name"], image.shape[:2])
    unseen = set(info["unseen"])
    present = {
        names[v]: ("unseen" if names[v] in unseen else "seen")
        for v in np.unique(label).tolist()
        if v != info["ignore_label"] and 0 <= v < len(names)
    }
    return _draw_truth(image, label, info, overlay_scale(*image.shape[:2], min_size)), present


def _episode_label(dataset_dict, info: Mapping[str, Any], shape: Tuple[int, int]) -> np.ndarray:
    """An (image, class) record of the episode benchmarks (PASCAL-5i, COCO-20i, FSS-1000) as
    a label map: its class where its mask shows it (``label_offset`` / ``mask_threshold``
    metadata, as the ``ovseg_binary_episode`` mapper reads it), ignore elsewhere; a mask of
    another size is resized to the image's with torch's nearest rule."""
    from .dataset_mappers.episode import read_episode_mask, resize_label_nearest

    meta = MetadataCatalog.get(info["metadata"].name)
    class_id = int(dataset_dict["episode_class"])
    value = class_id + int(meta.get("label_offset", 0))
    mask = read_episode_mask(
        dataset_dict["sem_seg_file_name"], value, meta.get("mask_threshold", None)
    )
    mask = resize_label_nearest(mask, shape)
    return np.where(mask == value, class_id, info["ignore_label"]).astype(np.int64)


def _draw_segments(dataset_dict, info, min_size: int) -> Tuple[np.ndarray, Dict[str, str]]:
    """Panoptic segments (a panoptic record) or instance annotations, unseen ones hatched;
    crowd regions are left undrawn."""
    import torch

    from ..evaluation.baselines import ground_truth_segments
    from ..utils.mask_visualization import draw_instance_predictions, draw_panoptic_prediction

    image = read_image(dataset_dict["file_name"], format="RGB")
    names, unseen = list(info["metadata"].stuff_classes), set(info["unseen"])
    shape, segments = ground_truth_segments(dataset_dict)
    segments = [(m, c) for m, c, crowd in segments if not crowd]
    present = {names[c]: ("unseen" if names[c] in unseen else "seen") for _, c in segments}
    scale = overlay_scale(*image.shape[:2], min_size)
    if "pan_seg_file_name" in dataset_dict:
        meta = MetadataCatalog.get(info["metadata"].name)
        things = set(meta.get("thing_dataset_id_to_contiguous_id", {}).values())
        ids = np.zeros(shape, np.int32)
        for k, (m, _) in enumerate(segments, 1):
            ids[m] = k
        info_ = [
            {"id": k, "category_id": c, "isthing": c in things}
            for k, (_, c) in enumerate(segments, 1)
        ]
        vis = draw_panoptic_prediction(
            image, torch.from_numpy(ids), info_, names, unseen=tuple(unseen), scale=scale
        )
    else:
        inst = Instances(shape)
        masks = [m for m, _ in segments]
        inst.pred_masks = torch.from_numpy(
            np.stack(masks) if masks else np.zeros((0, *shape), bool)
        )
        inst.pred_classes = torch.tensor([c for _, c in segments], dtype=torch.int64)
        vis = draw_instance_predictions(image, inst, names, unseen=tuple(unseen), scale=scale)
    return vis.get_image(), present


def _draw_truth(
    image: np.ndarray, label: np.ndarray, info: Mapping[str, Any], scale: float
) -> np.ndarray:
    """The ground-truth overlay of both tools: the dataset's colours, its unseen classes."""
    vis = draw_semantic(
        image,
        label,
        info["metadata"],
        ignore_label=info["ignore_label"],
        unseen=info["unseen"],
        scale=scale,
    )
    return vis.get_image()


def write_ground_truth_views(
    dataset: str, output: str, num: int = 10, start: int = 0, min_size: int = 320
) -> List[str]:
    """Draw the ground truth of images ``start .. start + num`` of a registered dataset.

    Args:
        dataset (str): a registered dataset name.
        output (str): the folder; gets ``<image_id>.png`` per image.
        num (int): how many images (fewer when the dataset ends first).
        start (int): index of the first image.
        min_size (int): enlarge smaller images to this short side.

    Returns:
        list[str]: the pictures written.
    """
    info = dataset_metadata(dataset)
    dicts = DatasetCatalog.get(dataset)
    if num < 1 or start < 0:
        raise ValueError(f"--num {num} must be >= 1 and --start {start} >= 0")
    chosen = dicts[start : start + num]
    if not chosen:
        raise ValueError(f"dataset {dataset!r} has {len(dicts)} images; --start is past it")
    make_output_folder(output)
    written = []
    for d in chosen:
        picture, present = draw_ground_truth(d, info, min_size)
        path = os.path.join(output, f"{image_id_of(d)}.png")
        save_image(path, picture)
        written.append(path)
        unseen = sorted(n for n, s in present.items() if s == "unseen")
        logger.info("%s: %d classes (unseen: %s)", path, len(present), ", ".join(unseen) or "none")
    logger.info("Wrote %d pictures of %s to %s", len(chosen), dataset, output)
    return written


def store_metadata(store: PseudoLabelStore, dataset_info: Mapping[str, Any]) -> Metadata:
    """Metadata of the store's vocabulary, colouring names the dataset has as the dataset does.

    Args:
        store (PseudoLabelStore): an opened store.
        dataset_info: from :func:`dataset_metadata`.

    Returns:
        Metadata: ``stuff_classes`` the store's vocabulary, ``stuff_colors`` the dataset's
        colour of the same (normalised) name, else a deterministic one.
    """
    ds_meta = dataset_info["metadata"]
    by_name = {normalize_name(n): c for n, c in zip(ds_meta.stuff_classes, ds_meta.stuff_colors)}
    fallback = deterministic_colors(len(store.vocabulary))
    colors = [by_name.get(normalize_name(n), fallback[i]) for i, n in enumerate(store.vocabulary)]
    return vocabulary_metadata(store.vocabulary, colors, name=store.root)


def agreement(
    pseudo: np.ndarray, gt: np.ndarray, table: np.ndarray, gt_ignore: int, store_ignore: int
) -> Optional[float]:
    """Fraction of pixels labelled in both where the pseudo-label names the true class.

    Args:
        pseudo (np.ndarray): (H, W) store labels.
        gt (np.ndarray): (H, W) ground-truth labels.
        table (np.ndarray): store label -> dataset label (``PseudoLabelStore.label_map_to``).
        gt_ignore, store_ignore (int): the two ignore values.

    Returns:
        float or None: in [0, 1]; None when no pixel is labelled in both.
    """
    valid = (pseudo != store_ignore) & (gt != gt_ignore)
    if not valid.any():
        return None
    return float((table[pseudo[valid]] == gt[valid]).mean())


def draw_comparison(
    store: PseudoLabelStore,
    image_id: str,
    dataset_dict: Mapping[str, Any],
    dataset_info: Mapping[str, Any],
    metadata: Metadata,
    panel_height: int = 320,
) -> Tuple[np.ndarray, Optional[float]]:
    """The four panels of one image: image | ground truth | pseudo-label | confidence.

    Args:
        store (PseudoLabelStore): the store holding ``image_id``.
        image_id (str): the image's id in the store.
        dataset_dict: its dataset dict; without "sem_seg_file_name" the truth panel is left
            out and there is no agreement.
        dataset_info: from :func:`dataset_metadata`.
        metadata (Metadata): the store's, from :func:`store_metadata`.
        panel_height (int): height of each panel in pixels.

    Returns:
        tuple: (picture (h, w, 3) uint8 RGB, agreement or None).
    """
    image = read_image(dataset_dict["file_name"], format="RGB")
    pseudo, confidence = store.read(image_id)
    if pseudo.shape != image.shape[:2]:
        raise ValueError(
            f"{image_id}: pseudo-label {pseudo.shape} and image {image.shape[:2]} differ in "
            "size; was the store made for another copy of the dataset?"
        )
    pseudo = pseudo.astype(np.int64)
    scale = overlay_scale(*image.shape[:2], panel_height)
    panels = [("image", image)]
    score = None
    if "sem_seg_file_name" in dataset_dict:
        gt = read_label(dataset_dict["sem_seg_file_name"], image.shape[:2])
        panels.append(("ground truth", _draw_truth(image, gt, dataset_info, scale)))
        ignore = dataset_info["ignore_label"]
        table = store.label_map_to(dataset_info["metadata"].stuff_classes, ignore_label=ignore)
        score = agreement(pseudo, gt, table, ignore, store.ignore_value)
    pseudo_vis = draw_semantic(
        image, pseudo, metadata, ignore_label=store.ignore_value, unseen=store.unseen, scale=scale
    )
    title = "pseudo-label" + (f" ({100 * score:.1f}% agree)" if score is not None else "")
    panels.append((title, pseudo_vis.get_image()))
    heat = (colormaps["viridis"](confidence)[..., :3] * 255).astype(np.uint8)
    panels.append((f"confidence (threshold {store.threshold:.2f})", heat))
    return panel_row(panels, panel_height), score


def write_pseudo_label_views(
    store_root: str, output: str, dataset: str = "", num: int = 10, panel_height: int = 320
) -> List[str]:
    """Draw the first ``num`` images of a pseudo-label store beside their ground truth.

    Args:
        store_root (str): the store's folder.
        output (str): the folder; gets ``<image_id>.png`` per image.
        dataset (str): the registered dataset the store labels; default its manifest's.
        num (int): how many images (fewer when the store holds fewer of the dataset's).
        panel_height (int): height of each panel in pixels.

    Returns:
        list[str]: the pictures written.
    """
    store = PseudoLabelStore.open(store_root)
    dataset = dataset or store.manifest.get("dataset") or ""
    if not dataset:
        raise ValueError(f"store {store_root!r} names no dataset in its manifest; give --dataset")
    if num < 1:
        raise ValueError(f"--num {num} must be >= 1")
    info = dataset_metadata(dataset)
    dicts = {image_id_of(d): d for d in DatasetCatalog.get(dataset)}
    ids = [i for i in store.image_ids() if i in dicts]
    if not ids:
        raise ValueError(
            f"none of the {len(store.image_ids())} images of store {store_root!r} is in "
            f"dataset {dataset!r}; is --dataset the one it was generated for?"
        )
    metadata = store_metadata(store, info)
    make_output_folder(output)
    written = []
    for image_id in ids[:num]:
        picture, score = draw_comparison(
            store, image_id, dicts[image_id], info, metadata, panel_height
        )
        path = os.path.join(output, f"{image_id}.png")
        save_image(path, picture)
        written.append(path)
        logger.info("%s: agreement %s", path, "n/a" if score is None else f"{100 * score:.1f}%")
    logger.info("Wrote %d pictures to %s", len(written), output)
    return written
