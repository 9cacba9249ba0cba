#!/usr/bin/env python
"""Show a pseudo-label store next to the ground truth: image | ground truth | pseudo | confidence.

Example:
    python tools/visualize_pseudo_labels.py --store pseudo/voc_maskclip_vitb16 \\
        --dataset voc_sem_seg_train --output vis/pseudo --num 8

Writes ``<output>/<image_id>.png`` per image the store holds. A class keeps its colour in
both panels (matched by name); unseen classes are hatched; pixels below the store's
threshold are undrawn. The pseudo panel's title gives the pixel agreement with the ground
truth over pixels labelled in both.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger

import ovseg  # noqa: F401  (registers the datasets)
from ovseg.data.datasets.common import deterministic_colors
from ovseg.pseudo import PseudoLabelStore, image_id_of
from ovseg.utils.visualization import (
    dataset_metadata,
    draw_semantic,
    overlay_scale,
    panel_row,
    read_label,
    save_image,
    vocabulary_metadata,
)
from ovseg.vocab import normalize_name

logger = logging.getLogger("ovseg.tools.visualize_pseudo_labels")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", required=True, help="a pseudo-label store folder")
    parser.add_argument(
        "--dataset", default="", help="the registered dataset it labels (default: its manifest's)"
    )
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("--num", type=int, default=10, help="how many images (default 10)")
    parser.add_argument(
        "--panel-height", type=int, default=320, help="height of each panel in pixels"
    )
    return parser


def store_metadata(store: PseudoLabelStore, dataset_info: Mapping[str, Any]):
    """Metadata of the store's vocabulary, colouring names the dataset has as the dataset does."""
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
    metadata,
    panel_height: int = 320,
) -> Tuple[np.ndarray, Optional[float]]:
    """The four panels of one image.

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
        gt_vis = draw_semantic(
            image,
            gt,
            dataset_info["metadata"],
            ignore_label=dataset_info["ignore_label"],
            unseen=dataset_info["unseen"],
            scale=scale,
        )
        panels.append(("ground truth", gt_vis.get_image()))
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


def run(args: argparse.Namespace) -> int:
    store = PseudoLabelStore.open(args.store)
    dataset = args.dataset or store.manifest.get("dataset") or ""
    if not dataset:
        raise ValueError(f"store {args.store!r} names no dataset in its manifest; give --dataset")
    if args.num < 1:
        raise ValueError(f"--num {args.num} must be >= 1")
    info = dataset_metadata(dataset)
    dicts = {image_id_of(d): d for d in DatasetCatalog.get(dataset)}
    ids = [i for i in store.image_ids() if i in dicts]
    if not ids:
        raise ValueError(
            f"none of the {len(store.image_ids())} images of store {args.store!r} is in "
            f"dataset {dataset!r}; is --dataset the one it was generated for?"
        )
    metadata = store_metadata(store, info)
    os.makedirs(args.output, exist_ok=True)
    for image_id in ids[: args.num]:
        picture, score = draw_comparison(
            store, image_id, dicts[image_id], info, metadata, args.panel_height
        )
        path = os.path.join(args.output, f"{image_id}.png")
        save_image(path, picture)
        logger.info("%s: agreement %s", path, "n/a" if score is None else f"{100 * score:.1f}%")
    logger.info("Wrote %d pictures to %s", min(len(ids), args.num), args.output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"visualize_pseudo_labels.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    setup_logger(name="ovseg")
    sys.exit(main())
