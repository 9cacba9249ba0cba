# Follows LSeg's zero-shot data path (isl-org/lang-seg fewshot_data/data/pascal.py, coco.py,
# dataset.py; modules/lsegmentation_module_zs.py), re-written as a detectron2 mapper.
"""The 2-way mapper of the few-shot-style benchmarks: one (image, class) record -> a binary
``others`` / class sample.

As LSeg's zero-shot runs:

- image and mask are read as stored, no EXIF orientation applied (``Image.open``, lang-seg
  fewshot_data/data/pascal.py:90-97, coco.py:81-89, fss.py:62-86), so a tagged image keeps
  the orientation its mask was drawn in;
- the image is resized to a fixed square (480 x 480, bilinear, no other augmentation;
  lang-seg fewshot_data/data/dataset.py:31-33, lsegmentation_module_zs.py:67-70), and the mask
  to the same square on its own, so a mask of another size than its image is scored as the
  official run scores it, with a warning;
- the mask is resized with torch's nearest rule (``F.interpolate``, hsnet data/pascal.py:39,
  data/coco.py:40), which picks other source pixels than PIL's nearest;
- the target is 1 where the mask is the record's class, 0 everywhere else: other classes,
  background and, in training, the 255 boundary too (``mask[mask != class + 1] = 0``,
  lang-seg fewshot_data/data/pascal.py:73-78; the training loss ignores nothing,
  lsegmentation_module_zs.py:55, 338-343). ``INPUT.EPISODE.TRAIN_BOUNDARY "ignore"`` keeps
  boundaries out of the loss instead (not the official run). In the test, boundary pixels
  are 255 (ignored) where the dataset says so (PASCAL-5i, hsnet common/evaluation.py:15-21);
- the vocabulary is ``['others', <class name>]`` (lang-seg lseg_net_zs.py:169-175);
- a dataset whose masks are binary pictures (FSS-1000: ``mask_threshold`` metadata) has its
  mask read as greyscale and the class where it is >= the threshold (lang-seg
  fewshot_data/data/fss.py:83-87).
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from ..image_io import LabelSizeError, read_image, read_label
from .build import MAPPER_REGISTRY

__all__ = [
    "BinaryEpisodeMapper",
    "TRAIN_BOUNDARY_RULES",
    "binary_target",
    "read_episode_mask",
    "resize_label_nearest",
]

logger = logging.getLogger(__name__)

TRAIN_BOUNDARY_RULES = ("others", "ignore")


def resize_label_nearest(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize an (H, W) label map to ``size`` (h, w) as ``F.interpolate(mode="nearest")``
    does (source index ``floor(dst * H / h)``)."""
    h, w = int(size[0]), int(size[1])
    if label.shape == (h, w):
        return label
    t = torch.from_numpy(np.ascontiguousarray(label).astype(np.float32))[None, None]
    return F.interpolate(t, size=(h, w), mode="nearest")[0, 0].numpy().astype(label.dtype)


def read_episode_mask(path: str, class_value: int, mask_threshold: Optional[int]) -> np.ndarray:
    """A record's mask as stored (no EXIF turn, as HSNet's ``Image.open``), in mask values:
    the raw label map, or for a binary picture (``mask_threshold``) ``class_value`` where its
    greyscale is >= the threshold and 0 elsewhere.

    Returns:
        np.ndarray: (H, W) integer map.
    """
    if mask_threshold is None:
        label = read_label(path, exif_orientation=False)
        return label[:, :, 0] if label.ndim == 3 else label
    grey = read_image(path, "L", exif_orientation=False)[:, :, 0]
    # int32: class ids above 255 (FSS-1000) must not wrap
    return np.where(grey >= mask_threshold, class_value, 0).astype(np.int32)


def binary_target(
    label: np.ndarray, class_value: int, *, boundary_ignored: bool, ignore_label: int = 255
) -> np.ndarray:
    """The 2-way target of one record: 1 where ``label == class_value``, else 0; with
    ``boundary_ignored`` the pixels labelled ``ignore_label`` stay ``ignore_label``.

    Returns:
        np.ndarray: (H, W) int64.
    """
    target = (label == class_value).astype(np.int64)
    if boundary_ignored:
        target[label == ignore_label] = ignore_label
    return target


@MAPPER_REGISTRY.register(name="ovseg_binary_episode")
class BinaryEpisodeMapper:
    """Map an (image, class) record (``"episode_class"``) to a 2-way model input.

    Output: "image" (uint8 (3, h, w) in the image format), "sem_seg" (long (h, w): 0 others,
    1 the class, ignore_label ignored), "vocabulary" (``[background_name, class name]``),
    "height"/"width" = the resized size (LSeg scores and is scored at 480 x 480), and the
    record's other keys ("file_name", "episode_class", "episode").
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        class_names: Sequence[str],
        image_size: Optional[Sequence[int]],
        image_format: str = "RGB",
        background_name: str = "others",
        label_offset: int = 1,
        ignore_label: int = 255,
        boundary_ignored: bool = False,
        mask_threshold: Optional[int] = None,
    ):
        """
        Args:
            is_train (bool): training or test mapping (kept for the mapper interface; the
                boundary rule below is what differs).
            class_names: the dataset's classes by id; a record's name is
                ``class_names[episode_class]``.
            image_size: (h, w) every image and mask is resized to; None keeps the original.
            image_format (str): an image format of ``detection_utils.read_image``.
            background_name (str): the first vocabulary entry.
            label_offset (int): a mask stores ``class id + label_offset``.
            ignore_label (int): the boundary / ignore label.
            boundary_ignored (bool): pixels labelled ``ignore_label`` stay ignored (else 0).
            mask_threshold (int or None): masks are binary pictures, read as greyscale: the
                record's class where >= this value, 0 elsewhere (None: masks store class ids).
        """
        self.is_train = is_train
        self.class_names = tuple(class_names)
        self.image_size = tuple(int(s) for s in image_size) if image_size else None
        self.image_format = image_format
        self.background_name = background_name
        self.label_offset = int(label_offset)
        self.ignore_label = int(ignore_label)
        self.boundary_ignored = bool(boundary_ignored)
        self.mask_threshold = None if mask_threshold is None else int(mask_threshold)
        self._size_warned: set = set()
        logger.info(
            f"[{type(self).__name__}] {'training' if is_train else 'test'}: size "
            f"{self.image_size}, boundary {'ignored' if boundary_ignored else 'as others'}"
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: Optional[str] = None):
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        dataset_name = dataset_name or (names[0] if names else None)
        if dataset_name is None:
            raise ValueError("No dataset name given and cfg.DATASETS.TRAIN/TEST is empty")
        meta = MetadataCatalog.get(dataset_name)
        if not meta.get("stuff_classes", None) or meta.get("label_offset", None) is None:
            raise ValueError(
                f"Dataset {dataset_name!r} is not an episode benchmark (no stuff_classes / "
                "label_offset metadata); INPUT.DATASET_MAPPER_NAME 'ovseg_binary_episode' "
                "serves pascal5i_* / coco20i_* / fss1000_* and the toy episodes"
            )
        rule = cfg.INPUT.EPISODE.TRAIN_BOUNDARY
        if rule not in TRAIN_BOUNDARY_RULES:
            raise ValueError(
                f"INPUT.EPISODE.TRAIN_BOUNDARY must be one of {TRAIN_BOUNDARY_RULES}, got {rule!r}"
            )
        if is_train:
            ignored = rule == "ignore"
        else:
            ignored = bool(meta.get("test_ignores_boundary", False))
        size = tuple(cfg.INPUT.EPISODE.IMAGE_SIZE)
        return {
            "is_train": is_train,
            "class_names": meta.stuff_classes,
            "image_size": size if size and min(size) > 0 else None,
            "image_format": cfg.INPUT.FORMAT,
            "background_name": meta.get("background_name", "others"),
            "label_offset": meta.label_offset,
            "ignore_label": meta.get("ignore_label", 255),
            "boundary_ignored": ignored,
            "mask_threshold": meta.get("mask_threshold", None),
        }

    def __call__(self, dataset_dict: dict) -> dict:
        record = dict(dataset_dict)
        if "episode_class" not in record or "sem_seg_file_name" not in record:
            raise ValueError(
                f"Record {record.get('file_name', '')!r} lacks 'episode_class' or "
                "'sem_seg_file_name'; the binary-episode mapper needs an (image, class) record"
            )
        class_id = int(record["episode_class"])
        if not 0 <= class_id < len(self.class_names):
            raise ValueError(
                f"Record {record['file_name']!r}: episode_class {class_id} is not a class id of "
                f"the {len(self.class_names)}-class dataset"
            )
        image = read_image(record["file_name"], self.image_format, exif_orientation=False)
        value = class_id + self.label_offset
        label = read_episode_mask(record.pop("sem_seg_file_name"), value, self.mask_threshold)
        if label.shape != image.shape[:2]:
            if self.image_size is None:
                raise LabelSizeError(
                    f"Mask of {record['file_name']!r} is {label.shape[::-1]} (WxH) but the image "
                    f"is {image.shape[1::-1]}; a mask must have its image's size: convert it "
                    "again, or remove the image and its mask from the dataset (or set "
                    "INPUT.EPISODE.IMAGE_SIZE to resize both, as HSNet does)"
                )
            # HSNet resizes image and mask to the square each on its own (dataset.py:31-33,
            # fss.py:38-39): a pair of other sizes is scored as the official run scores it
            if record["file_name"] not in self._size_warned:
                self._size_warned.add(record["file_name"])
                logger.warning(
                    f"Mask of {record['file_name']!r} is {label.shape[::-1]} (WxH), the image "
                    f"{image.shape[1::-1]}: both resized to {self.image_size[::-1]} on their own, "
                    "as HSNet's loaders do"
                )
        if self.image_size is not None:
            h, w = self.image_size
            image = T.ResizeTransform(*image.shape[:2], h, w).apply_image(image)
            label = resize_label_nearest(label, (h, w))
        target = binary_target(
            label,
            value,
            boundary_ignored=self.boundary_ignored,
            ignore_label=self.ignore_label,
        )
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        record["sem_seg"] = torch.as_tensor(target)
        record["height"], record["width"] = target.shape
        record["vocabulary"] = [self.background_name, self.class_names[class_id]]
        return record
