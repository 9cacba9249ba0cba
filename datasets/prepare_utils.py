"""Helpers shared by the ``datasets/prepare_*.py`` converters (imported from this folder)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ovseg.utils.cli import run_reporting_errors
from ovseg.utils.io import atomic_write

try:  # the C decoder of COCO-style RLE masks (a detectron2 dependency); optional
    from pycocotools import mask as _pycocotools_mask
except ImportError:  # pragma: no cover - depends on the environment
    _pycocotools_mask = None

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


def run_script(main: Callable[[], object]) -> int:
    """A script's ``__main__``: a missing folder or a bad raw file ends in one line naming it
    (``<script>: error: ...``, exit 2), not a traceback."""
    return run_reporting_errors(os.path.basename(sys.argv[0]), main)


def require(path: Path, what: str, option: str = "--root") -> Path:
    """Return ``path`` if it exists, else raise an error naming it and pointing to the README
    and to the ``option`` that chooses where it is looked for."""
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found: {path}. Download and unpack the official files as drawn in "
            f"{README} (or pass {option})."
        )
    return path


def list_files(folder: Path, pattern: str, what: str) -> list[Path]:
    """Sorted files of ``folder`` matching ``pattern``; an error naming the folder if none."""
    files = sorted(require(folder, what).glob(pattern))
    if not files:
        raise FileNotFoundError(f"{what}: no {pattern} files in {folder}. See {README}.")
    return files


def _list_entry(line: str, path: Path) -> str:
    """The image id of one split-list line, in any of the forms the VOC world uses.

    ``2008_000002`` (VOC ``ImageSets``, mmsegmentation), ``2008_000002 -1`` (VOC per-class
    lists) and DeepLab's ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``.
    """
    tokens = line.split()
    if "/" not in tokens[0]:
        return tokens[0]
    stems = [PurePosixPath(t).stem for t in tokens if "/" in t]
    if len(set(stems)) != 1:
        raise ValueError(f"{path}: line {line.strip()!r} names two different images {stems}")
    return stems[0]


def read_id_list(path: Path) -> list[str]:
    """Read a split list: one image id per line (VOC ``ImageSets``) or DeepLab's path pairs."""
    require(path, "split list")
    with open(path, encoding="utf-8") as f:
        ids = [_list_entry(line, path) for line in f if line.strip()]
    if not ids:
        raise ValueError(f"split list {path} is empty")
    return ids


def _rle_string_counts(counts: str) -> list[int]:
    # COCO's compressed RLE (maskApi.c rleFrString): 5 bits per char offset by 48, 0x20 says
    # "more chars follow", 0x10 is the sign of the last chunk; from the 3rd run on, each value
    # is a difference to the run two places before
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def rle_decode(segmentation: dict, source: str) -> np.ndarray:
    """Decode a COCO-style RLE mask (compressed string or uncompressed list of runs).

    This is what the PASCAL in Detail API (``detail.Detail.decodeMask``) and pycocotools
    compute (pycocotools does it when installed: the same C code as Detail's, and much faster
    than the pure-Python path); polygons are refused (Detail's ``trainval_merged.json`` stores
    RLE only, and its API decodes nothing else).

    Args:
        segmentation (dict): ``{"size": [H, W], "counts": str | list[int]}``; runs alternate
            0s and 1s, starting with 0s, over the pixels in column-major order.
        source (str): where the mask came from, named in errors.

    Returns:
        np.ndarray: (H, W) bool mask.
    """
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise ValueError(
            f"{source}: expected an RLE mask {{'size': [h, w], 'counts': ...}}, got "
            f"{type(segmentation).__name__}; is this the PASCAL in Detail trainval_merged.json?"
        )
    counts = segmentation["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if isinstance(counts, bytes) and _pycocotools_mask is not None:
        rle = {"size": [int(v) for v in segmentation["size"]], "counts": counts}
        with warnings.catch_warnings():  # its numpy-2 "copy keyword" deprecation, not ours
            warnings.simplefilter("ignore", DeprecationWarning)
            return _pycocotools_mask.decode(rle).astype(bool)
    return rle_decode_python(segmentation, source)


def rle_decode_python(segmentation: dict, source: str) -> np.ndarray:
    """:func:`rle_decode` without pycocotools."""
    height, width = (int(v) for v in segmentation["size"])
    counts = segmentation["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = np.asarray(_rle_string_counts(counts) if isinstance(counts, str) else counts)
    if (runs < 0).any() or runs.sum() != height * width:
        raise ValueError(
            f"{source}: RLE runs cover {runs.sum()} pixels with negative runs "
            f"{(runs < 0).any()}; the mask size is {height}x{width}"
        )
    values = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return values.reshape(width, height).T


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
    jobs: Iterable[tuple[Any, Path | tuple[Path, ...]]],
    convert: Callable[[Any, Any], object],
    desc: str,
) -> tuple[int, int]:
    """Convert every ``(source, destination)`` pair whose destination does not exist yet.

    Args:
        jobs: pairs of a raw file (or any source ``convert`` understands) and an output file,
            or a tuple of output files written together (skipped only when all exist).
        convert: ``convert(source, destination)``, writing the destination(s) atomically.
        desc (str): label of the progress bar.

    Returns:
        tuple[int, int]: number of pairs converted now and number skipped (already converted).
    """
    jobs = list(jobs)
    done = skipped = 0
    for src, dst in tqdm(jobs, desc=desc, unit="img"):
        outputs = dst if isinstance(dst, tuple) else (dst,)
        if all(p.exists() for p in outputs):
            skipped += 1
            continue
        try:
            convert(src, dst)
        except (OSError, ValueError) as e:
            raise _naming(e, src) from e
        done += 1
    print(f"{desc}: {done} converted, {skipped} already there")
    return done, skipped


def _naming(error: Exception, src: Any) -> Exception:
    """``error`` with the raw file it came from named (PIL says only "Truncated File Read")."""
    paths = src if isinstance(src, tuple) else (src,)
    if not all(isinstance(p, (str, os.PathLike)) for p in paths):  # records: name nothing
        return error
    name = ", ".join(map(str, paths))
    if name in str(error):
        return error
    message = (
        f"{name}: {error}; is the file damaged (re-download it) or not the official one? "
        f"See {README}."
    )
    try:
        return type(error)(message)
    except TypeError:  # an exception class that takes other arguments
        return ValueError(message)


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of a panoptic PNG (H, W, 3): ``R + 256 G + 256**2 B`` (panopticapi's rgb2id)."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def save_panoptic(ids: np.ndarray, dst: Path) -> None:
    """Write (H, W) segment ids as a panoptic RGB PNG atomically (panopticapi's id2rgb)."""
    ids = ids.astype(np.uint32)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
    _write(dst, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def segment_info(mask: np.ndarray, segment_id: int, category_id: int, iscrowd: int = 0) -> dict:
    """A panoptic ``segments_info`` entry: id, category, crowd flag, area, xywh box."""
    ys, xs = np.nonzero(mask)
    box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return {
        "id": int(segment_id),
        "category_id": int(category_id),
        "iscrowd": int(iscrowd),
        "area": int(mask.sum()),
        "bbox": box,
    }


def ensure_label_counts(folder: Path) -> None:
    """Write ``<folder>_label_count.json``, the classes of each label PNG (FreeSeg's
    ``tools/mask_cls_collect.py`` output, which its prompt stage reads instead of every PNG:
    :mod:`ovseg.data.label_counts`), unless a current one is there."""
    from ovseg.data.label_counts import load_label_counts, write_label_counts

    if load_label_counts(folder) is None:
        print(f"{write_label_counts(folder)} written")
