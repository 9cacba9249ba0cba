"""Convert PASCAL VOC 2012 labels into 20-class labels (no background) for ``voc_sem_seg_*``.

Official labels: 0 = background, 1..20 = classes, 255 = object boundary. For VOC-20 the
background and boundary become 255 (ignore) and classes 0..19. Writes three splits under
``VOCdevkit/VOC2012/annotations_detectron2/``:

- ``train/`` (1,464) and ``val/`` (1,449): ``ImageSets/Segmentation/{train,val}.txt``, labels
  from VOC's own ``SegmentationClass``. As in SAN / CAT-Seg, an image with no labelled pixel
  left (background only) gets no label file, so it is in no split.
- ``val21/`` (1,449): VOC-21, background kept as class 0 (``voc21``), every val image; for
  evaluation with a background by a threshold (TEST.BACKGROUND_THRESHOLD).
- ``train_aug/`` (10,582), the training set of ZegCLIP and MaskCLIP+ (mmsegmentation's
  ``train.txt`` + ``aug.txt``): (an aug list, or the ``SegmentationClassAug`` file names) plus
  VOC train, minus VOC val. An image's label is VOC's ``SegmentationClass`` when it has one
  (the VOC train images), else SBD's ``SegmentationClassAug``. Every listed image is kept, as
  mmsegmentation does. Converted only when ``SegmentationClassAug`` exists.
- ``train_aug_base/``, FreeSeg's zero-shot training split (official
  ``datasets/prepare_voc_sem_seg.py:38-58``, its ``train_base``): the ``train_aug`` labels with
  the 5 unseen classes (ids 15-19) set to 255, and an image left out when no seen pixel
  remains. Labels keep the VOC-20 ids (the official script renumbers the 15 seen ones).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from prepare_utils import (
    README,
    check_values,
    ensure_label_counts,
    make_lut,
    read_id_list,
    require,
    root_parser,
    run_jobs,
    run_script,
    save_label,
)

AUG_SIZE = 10582  # (SBD train + SBD val + VOC train) - VOC val
AUG_LIST_NAMES = ("trainaug.txt", "train_aug.txt")  # mmsegmentation's, DeepLab's
_LUT = make_lut(range(1, 21), 256, 255, np.uint8)
_VALID = np.zeros(256, dtype=bool)
_VALID[:21] = True
_VALID[255] = True
UNSEEN_IDS = (15, 16, 17, 18, 19)  # potted plant, sheep, sofa, train, tv monitor
_BASE_LUT = np.arange(256, dtype=np.uint8)
_BASE_LUT[list(UNSEEN_IDS)] = 255


def convert_voc_label(label: np.ndarray, source: str = "label") -> np.ndarray:
    """Map a VOC label (H, W) uint8 (0 background, 1..20, 255 boundary) to 0..19 / 255."""
    check_values(label, _VALID, source)
    return _LUT[label]


def copy_voc21_file(src: Path, dst: Path) -> bool:
    """Write one VOC label PNG as a grey VOC-21 label (0 background, 1..20, 255), checked."""
    with Image.open(src) as image:
        label = np.asarray(image)
    check_values(label, _VALID, str(src))
    save_label(label.astype(np.uint8), dst)
    return True


def convert_file(src: Path, dst: Path, keep_empty: bool = False) -> bool:
    """Convert one VOC label PNG (palette or grey) into ``dst``.

    Returns False, writing nothing, if no pixel is labelled, unless ``keep_empty``.
    """
    with Image.open(src) as image:
        label = convert_voc_label(np.asarray(image), str(src))
    if (label == 255).all() and not keep_empty:
        return False
    save_label(label, dst)
    return True


def convert_base_file(src: Path, dst: Path) -> bool:
    """Write the seen-only label of a converted VOC-20 label ``src`` into ``dst``.

    Returns False, writing nothing, if no seen pixel remains (the official ``train_base``
    leaves such images out, ``prepare_voc_sem_seg.py:56-57``).
    """
    with Image.open(src) as image:
        label = _BASE_LUT[np.asarray(image)]
    if (label == 255).all():
        return False
    save_label(label, dst)
    return True


def _resolve_list(root: Path, given: str | None) -> Path | None:
    """The aug list: ``given`` (as is, else under VOC2012/), else a standard one if present."""
    if given is not None:
        for path in (Path(given), root / given):
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"aug list not found: {given} (nor {root / given}). Pass mmsegmentation's "
            f"trainaug.txt or DeepLab's train_aug.txt; see {README}."
        )
    for name in AUG_LIST_NAMES:
        path = root / "ImageSets" / "Segmentation" / name
        if path.is_file():
            return path
    return None


def aug_train_ids(root: Path, aug_list: str | None = None) -> list[str]:
    """The ids of the aug training set: (aug list or aug label names) + VOC train - VOC val.

    Args:
        root (Path): ``VOCdevkit/VOC2012``.
        aug_list (str, optional): a list in mmsegmentation form (one id per line) or DeepLab
            form (``/JPEGImages/x.jpg /SegmentationClassAug/x.png``); by default
            ``ImageSets/Segmentation/{trainaug,train_aug}.txt``, else every
            ``SegmentationClassAug/*.png``.

    Returns:
        list[str]: sorted image ids.
    """
    lists = root / "ImageSets" / "Segmentation"
    train = read_id_list(lists / "train.txt")
    val = set(read_id_list(lists / "val.txt"))
    path = _resolve_list(root, aug_list)
    if path is not None:
        listed, where = read_id_list(path), str(path)
    else:
        aug_dir = require(root / "SegmentationClassAug", "SBD labels (SegmentationClassAug)")
        listed, where = [p.stem for p in aug_dir.glob("*.png")], f"{aug_dir}/*.png"
    ids = (set(listed) | set(train)) - val
    dropped = len(set(listed) & val)
    print(f"VOC-20 train_aug: {len(ids)} images from {where} + train.txt - val.txt", end="")
    print(f" ({dropped} VOC val images left out)" if dropped else "")
    if len(ids) != AUG_SIZE:
        print(f"note: the standard aug training set has {AUG_SIZE} images, this one {len(ids)}")
    return sorted(ids)


def aug_jobs(root: Path, ids: list[str], out_dir: Path) -> list[tuple[Path, Path]]:
    """(label, output) pairs of the aug set: VOC's own label when there is one, else SBD's."""
    voc_dir, aug_dir = root / "SegmentationClass", root / "SegmentationClassAug"
    jobs = []
    for image_id in ids:
        src = voc_dir / f"{image_id}.png"
        if not src.is_file():
            src = aug_dir / f"{image_id}.png"
        if not src.is_file():
            raise FileNotFoundError(
                f"label of aug training image {image_id} not found: neither "
                f"{voc_dir / image_id}.png nor {src}. SegmentationClassAug must hold the SBD "
                f"labels (mmsegmentation's voc_aug.py or DeepLab's SegmentationClassAug.zip); "
                f"see {README}."
            )
        jobs.append((src, out_dir / f"{image_id}.png"))
    return jobs


def main(argv: list[str] | None = None) -> None:
    parser = root_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--aug-list",
        default=None,
        help="aug training list (mmsegmentation's trainaug.txt or DeepLab's train_aug.txt); "
        "default: ImageSets/Segmentation/{trainaug,train_aug}.txt if present, else the "
        "SegmentationClassAug file names",
    )
    parser.add_argument("--no-aug", action="store_true", help="skip the train_aug split")
    args = parser.parse_args(argv)
    root = require(Path(args.root) / "VOCdevkit" / "VOC2012", "VOC 2012 folder")
    require(root / "JPEGImages", "VOC 2012 images")
    label_dir = require(root / "SegmentationClass", "VOC 2012 labels")
    out = root / "annotations_detectron2"
    for split in ("train", "val"):
        jobs = []
        for image_id in read_id_list(root / "ImageSets" / "Segmentation" / f"{split}.txt"):
            src = require(label_dir / f"{image_id}.png", f"label of {image_id} ({split}.txt)")
            jobs.append((src, out / split / f"{image_id}.png"))
        run_jobs(jobs, convert_file, f"VOC-20 {split}")
        if split == "val":
            jobs21 = [(src, out / "val21" / dst.name) for src, dst in jobs]
            run_jobs(jobs21, copy_voc21_file, "VOC-21 val")
    if args.no_aug:
        return
    if args.aug_list is None and not (root / "SegmentationClassAug").is_dir():
        print(f"VOC-20 train_aug skipped: no {root / 'SegmentationClassAug'} (see {README})")
        return
    jobs = aug_jobs(root, aug_train_ids(root, args.aug_list), out / "train_aug")
    keep_all = functools.partial(convert_file, keep_empty=True)
    run_jobs(jobs, keep_all, "VOC-20 train_aug")
    base = [(dst, out / "train_aug_base" / dst.name) for _, dst in jobs]
    run_jobs(base, convert_base_file, "VOC-20 train_aug_base (FreeSeg's seen-only split)")
    ensure_label_counts(out / "train_aug_base")  # FreeSeg's prompt stage reads it


if __name__ == "__main__":
    sys.exit(run_script(main))
