"""The checks of a custom semantic split's label PNGs, run when the split is loaded (and by
``python -m ovseg.data.datasets.custom``): one channel, values in the vocabulary, and the size
of its image as the dataset mapper reads it (EXIF orientation applied)."""

from __future__ import annotations

import os

import numpy as np
from tqdm import tqdm

from ..image_io import (
    TURNED_ORIENTATIONS,
    LabelSizeError,
    read_image,
    read_image_size,
    read_label,
)

__all__ = ["check_label", "undecodable_images"]

GUIDE = "docs/custom_dataset.md"


_CHECKED: set = set()  # labels that passed, keyed by both files' path, size and mtime


def _stamp(path: str) -> tuple:
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


def check_label(label_path: str, image_path: str, num_classes: int, ignore: int, name: str):
    """Refuse a label that is not one channel, holds values outside the vocabulary (other
    than ``ignore``), or is not its image's size.

    A label checked once in this process (the files unchanged) is not read again: train_net.py
    checks a custom split before it launches, and a one-process run then loads it again.

    Raises:
        ValueError: naming the dataset, the file and what to fix.
    """
    key = (_stamp(label_path), _stamp(image_path), num_classes, ignore)
    if key in _CHECKED:
        return
    label = read_label(label_path)
    if label.ndim != 2:
        raise ValueError(
            f"Dataset {name!r}: label {label_path} has shape {label.shape}; a label must be a "
            "single-channel PNG (mode L, P or I;16) whose values are class indices, not a "
            f"colour image; see {GUIDE}"
        )
    height, width, orientation = read_image_size(image_path)
    if label.shape != (height, width):
        turned = ""
        if orientation in TURNED_ORIENTATIONS and label.shape == (width, height):
            turned = (
                f" (its EXIF orientation {orientation} turns the stored {height}x{width} "  # WxH
                "picture, and the label has the stored size: turn the label too, or save the "
                "image turned and without the orientation tag, e.g. PIL.ImageOps.exif_transpose)"
            )
        raise LabelSizeError(  # a DataFileError: train_net.py prints it in one line
            f"Dataset {name!r}: label {label_path} is {label.shape[1]}x{label.shape[0]} (WxH) "
            f"but its image {image_path} is {width}x{height} as it is read{turned}; a label "
            f"must have its image's size; see {GUIDE}"
        )
    values = np.unique(label)
    bad = [int(v) for v in values if v >= num_classes and v != ignore]
    if bad:
        raise ValueError(
            f"Dataset {name!r}: label {label_path} holds values {bad[:8]} outside the "
            f"{num_classes}-class vocabulary (0..{num_classes - 1}) and not the ignore value "
            f"{ignore}; a pixel's value must be its class's index in the vocabulary. Fix the "
            f"labels, add the classes, or set ignore_label; see {GUIDE}"
        )
    _CHECKED.add(key)


def undecodable_images(records, name: str):
    """One line naming the images of a split's ``records`` that cannot be decoded in full (a
    truncated or corrupt file passes the header read of :func:`check_label`, and would stop
    training when the loader reached it), or None. The checker's pass: each image is read."""
    bad = []
    # a bar on a terminal (disable=None): a split of 100k photos takes minutes to decode
    for record in tqdm(records, desc=f"decoding {name}", unit="image", leave=False, disable=None):
        try:
            read_image(record["file_name"])
        except (OSError, ValueError) as e:  # ImageDecodeError names the file
            bad.append(e)
    if not bad:
        return None
    return (
        f"Dataset {name!r}: {len(bad)} of {len(records)} images cannot be decoded, e.g. "
        f"{bad[0]}; re-export them or move them (and their labels) out of the split; see {GUIDE}"
    )
