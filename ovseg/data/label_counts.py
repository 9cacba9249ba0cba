# Follows the official FreeSeg label-count files (tools/mask_cls_collect.py, read by
# mask2former/data/datasets/utils.py:10-42 and register_coco_full.py:232-236), re-written.
"""The classes present in each label PNG of a folder, read once.

FreeSeg's prompt stage makes one semantic region record per class of each training label map.
Reading every PNG (118k for COCO) at every start and on every process is slow, so, as the
release's ``tools/mask_cls_collect.py``, the classes are written once beside the folder:
``<folder>_label_count.json``, ``{"<name>.png": [class ids present, the ignore value left
out]}``. The prepare scripts write it for the folders FreeSeg's prompt stage trains on
(:func:`write_label_counts`); :func:`load_label_counts` gives it back, or None when it is
missing or older than its folder (files added or removed since), and the caller then reads
the PNGs itself.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..utils.io import atomic_write_json

__all__ = ["label_classes", "label_count_file", "load_label_counts", "write_label_counts"]

logger = logging.getLogger(__name__)


def label_count_file(folder: os.PathLike | str) -> Path:
    """The count file of a label folder: ``<folder>_label_count.json`` (the release's name)."""
    return Path(str(folder).rstrip("/\\") + "_label_count.json")


def label_classes(path: os.PathLike | str, ignore_label: int = 255) -> List[int]:
    """The classes of one label PNG, increasing, ``ignore_label`` left out."""
    with Image.open(path) as image:
        ids = np.unique(np.asarray(image))
    return [int(i) for i in ids if int(i) != ignore_label]


def write_label_counts(folder: os.PathLike | str, ignore_label: int = 255) -> Path:
    """Write the count file of every ``*.png`` in ``folder`` (atomically); returns its path."""
    folder = Path(folder)
    pngs = sorted(folder.glob("*.png"))
    counts = {
        p.name: label_classes(p, ignore_label)
        for p in tqdm(pngs, desc=f"{folder.name} label classes", unit="img")
    }
    dst = label_count_file(folder)
    atomic_write_json(dst, counts, indent=None)
    return dst


def load_label_counts(folder: Optional[os.PathLike | str]) -> Optional[Dict[str, List[int]]]:
    """The count file of ``folder``, or None: no folder, no file, or a file older than the
    folder (its files changed since: read the PNGs instead)."""
    if not folder:
        return None
    path = label_count_file(folder)
    if not path.is_file():
        return None
    if path.stat().st_mtime < Path(folder).stat().st_mtime:
        logger.warning(
            "%s is older than %s (files added or removed since): reading the label PNGs; "
            "re-run the dataset's prepare script to rewrite it",
            path,
            folder,
        )
        return None
    with open(path) as f:
        return json.load(f)
