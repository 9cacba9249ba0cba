"""Helpers shared by the ``datasets/prepare_*.py`` converters (imported from this folder)."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ovseg.utils.io import atomic_write

README = "datasets/README.md"


def root_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--root`` (default ``$DETECTRON2_DATASETS``, else ``datasets``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--root",
        default=os.environ.get("DETECTRON2_DATASETS", "datasets"),
        help="folder holding the datasets (default: $DETECTRON2_DATASETS, else ./datasets)",
    )
    return parser


def require(path: Path, what: str) -> Path:
    """Return ``path`` if it exists, else raise an error naming it and pointing to the README."""
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found: {path}. Download and unpack the official files as drawn in "
            f"{README} (or pass --root)."
        )
    return path


def list_files(folder: Path, pattern: str, what: str) -> list[Path]:
    """Sorted files of ``folder`` matching ``pattern``; an error naming the folder if none."""
    files = sorted(require(folder, what).glob(pattern))
    if not files:
        raise FileNotFoundError(f"{what}: no {pattern} files in {folder}. See {README}.")
    return files


def read_id_list(path: Path) -> list[str]:
    """Read a split list (one image id per line, as in VOC ``ImageSets``)."""
    require(path, "split list")
    with open(path, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError(f"split list {path} is empty")
    return ids


def make_lut(dataset_ids: Sequence[int], size: int, ignore: int, dtype) -> np.ndarray:
    """Look-up table mapping raw label values to contiguous ids (``ignore`` elsewhere).

    Args:
        dataset_ids (Sequence[int]): raw value of contiguous class 0, 1, 2, ...
        size (int): number of raw values the table covers (largest valid raw value + 1).
        ignore (int): value for raw values that are no class.
        dtype: output dtype (``np.uint8`` or ``np.uint16``).

    Returns:
        np.ndarray: (size,) table; ``table[raw]`` is the contiguous id.
    """
    lut = np.full(size, ignore, dtype=dtype)
    lut[np.asarray(dataset_ids)] = np.arange(len(dataset_ids), dtype=dtype)
    return lut


def check_values(label: np.ndarray, valid: np.ndarray, source: Path | str) -> None:
    """Raise if ``label`` holds a raw value outside the boolean table ``valid``.

    Args:
        label (np.ndarray): (H, W) integer raw labels.
        valid (np.ndarray): (N,) bool, ``valid[v]`` says whether raw value ``v`` may occur.
        source: the file the labels came from, named in the error.
    """
    if label.ndim != 2:
        raise ValueError(f"{source}: expected a single-channel label map, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"{source}: expected integer labels, got dtype {label.dtype}")
    values = np.unique(label)
    bad = values[(values < 0) | (values >= len(valid))]
    if bad.size == 0:
        bad = values[~valid[values]]
    if bad.size:
        raise ValueError(
            f"{source}: unexpected label values {bad[:10].tolist()}; is this the official "
            f"annotation file? See {README}."
        )


def _write(dst: Path, write: Callable[[str], object]) -> None:
    # thousands of files, each reconverted if lost: atomic, but without an fsync per file
    atomic_write(dst, write, by_name=True, fsync=False)


def save_label(label: np.ndarray, dst: Path) -> None:
    """Write a label map as PNG atomically (temp file + ``os.replace``): 8-bit or 16-bit."""
    if label.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"labels for {dst} must be uint8 or uint16, got {label.dtype}")
    _write(dst, lambda tmp: Image.fromarray(label).save(tmp, format="PNG"))


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (temp file + ``os.replace``)."""
    _write(dst, lambda tmp: shutil.copyfile(src, tmp))


def save_image(image: Image.Image, dst: Path) -> None:
    """Write an RGB image as JPEG atomically (PIL's default quality, as SAN/CAT-Seg do)."""
    _write(dst, lambda tmp: image.save(tmp, format="JPEG"))


def run_jobs(
    jobs: Iterable[tuple[Path, Path]],
    convert: Callable[[Path, Path], object],
    desc: str,
) -> tuple[int, int]:
    """Convert every ``(source, destination)`` pair whose destination does not exist yet.

    Args:
        jobs: pairs of raw file and output file.
        convert: ``convert(source, destination)``, writing the destination atomically.
        desc (str): label of the progress bar.

    Returns:
        tuple[int, int]: number of pairs converted now and number skipped (already converted).
    """
    jobs = list(jobs)
    done = skipped = 0
    for src, dst in tqdm(jobs, desc=desc, unit="img"):
        if dst.exists():
            skipped += 1
            continue
        convert(src, dst)
        done += 1
    print(f"{desc}: {done} converted, {skipped} already there")
    return done, skipped
