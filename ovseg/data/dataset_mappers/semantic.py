"""The semantic-segmentation dataset mapper, with the zero-shot label handling.

Modelled on Mask2Former's ``MaskFormerSemanticDatasetMapper`` (augmentations, padding),
re-written; the zero-shot remap and the per-sample vocabulary are ovseg's.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ...pseudo import store_class_count, store_label_map
from ...pseudo.checksums import verify_file
from ...vocab import (
    ZERO_SHOT_SETTINGS,
    Vocabulary,
    normalize_name,
    resolve_vocabulary,
    training_label_space,
)
from ..image_io import LabelSizeError, read_image, read_label
from .build import MAPPER_REGISTRY
from .crop_count import CropCountInput, crop_count_table
from .padding import image_padding
from .resize import inference_resize
from .training_pipeline import training_augmentations

__all__ = [
    "ZERO_SHOT_SETTINGS",
    "SemanticDatasetMapper",
    "check_label_range",
    "label_for_transforms",
    "transform_label",
    "zero_shot_label_map",
]

logger = logging.getLogger(__name__)


def zero_shot_label_map(
    class_names: Sequence[str],
    *,
    unseen: Optional[Sequence[str]] = (),
    setting: str = "none",
    ignore_label: int = 255,
    target_names: Optional[Sequence[str]] = None,
    dataset_name: str = "",
) -> tuple[Optional[np.ndarray], tuple[str, ...]]:
    """The lookup table from a dataset's label ids to training label ids, and their names.

    ``none`` keeps every label (vocabulary: the dataset's classes); ``inductive`` turns
    unseen pixels into ignore and renumbers the rest in the seen-class index space
    (vocabulary: the seen classes); ``transductive`` turns unseen pixels into ignore and
    keeps the full index space (vocabulary: all classes). With ``target_names`` (the
    config's TRAIN_VOCABULARY), labels are mapped by name into that vocabulary instead
    (unseen names leave it in the inductive setting) and dataset classes it lacks become
    ignore. Label values that are not a class id (including ``ignore_label``) map to ignore.

    Args:
        class_names: the dataset's classes (``stuff_classes``), in label-id order.
        unseen: the dataset's unseen classes (``unseen_classes``); None when the metadata
            has none.
        setting (str): "none", "inductive" or "transductive".
        ignore_label (int): the label of ignored pixels.
        target_names: an explicit training vocabulary, or None.
        dataset_name (str): for error messages.

    Returns:
        tuple: (table, vocabulary). ``table`` is an integer array of at least 256 entries
        indexed by dataset label (``table[label]`` is the training label), or None when
        labels stay unchanged; ``vocabulary`` names the training label ids.
    """
    where = f"dataset {dataset_name!r}" if dataset_name else "the dataset"
    # Validates the names (empty, duplicates) and canonicalises the unseen ones.
    classes = Vocabulary(tuple(class_names), unseen=tuple(unseen or ()))
    if setting in ZERO_SHOT_SETTINGS and setting != "none" and not classes.unseen:
        found = "no unseen_classes metadata" if unseen is None else "an empty unseen_classes"
        raise ValueError(
            f"ZERO_SHOT_SETTING={setting!r} needs unseen classes, but {where} has {found}; "
            "register the dataset's unseen_classes or set MODEL.OVSEG.ZERO_SHOT_SETTING 'none'"
        )
    space = training_label_space(classes, setting, target_names, dataset_name)
    if target_names is None and setting == "none":
        return None, space.names
    dropped = set(classes.unseen) if setting != "none" else set()
    vocabulary = space.names
    index = {normalize_name(n): i for i, n in enumerate(vocabulary)}

    size = max(256, len(classes), ignore_label + 1)
    dtype = np.uint8 if size == 256 and ignore_label <= 255 else np.int64
    table = np.full(size, ignore_label, dtype=dtype)
    for label, name in enumerate(classes.names):
        if name not in dropped and normalize_name(name) in index:
            table[label] = index[normalize_name(name)]
    if target_names is not None and not any(
        normalize_name(n) in index for n in classes.names if n not in dropped
    ):
        raise ValueError(
            f"No class of {where} {list(classes.names)} is in the training vocabulary "
            f"{list(vocabulary)} (MODEL.OVSEG.TRAIN_VOCABULARY): every pixel would be ignored"
        )
    return table, vocabulary


def check_label_range(label: np.ndarray, num_classes: int, ignore_label: int, path: str) -> None:
    """Raise when ``label`` holds a value outside ``[0, num_classes)`` that is not
    ``ignore_label`` (a label file of another dataset, or one saved in the wrong format).

    Args:
        label (np.ndarray): (H, W) integer labels as read.
        num_classes (int): K, the number of classes the file's ids refer to.
        ignore_label (int): the one other value allowed.
        path (str): the file, named in the error.
    """
    bad = (label != ignore_label) & ((label < 0) | (label >= num_classes))
    if bad.any():
        values = np.unique(label[bad])
        raise ValueError(
            f"Label file {path!r} has values {values[:8].tolist()} ({int(bad.sum())} pixels) "
            f"that are neither class ids in [0, {num_classes}) nor the ignore label "
            f"{ignore_label}; fix the file or the dataset's registration (stuff_classes, "
            "ignore_label)"
        )


def label_for_transforms(label: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """A label map in the dtype detectron2's transforms keep exact: uint8 as is (PIL
    resizes it), any other as float64 (torch resizes it, and has no integer nearest kernel;
    exact for ids < 2**53)."""
    if label is None or label.dtype == np.uint8:
        return label
    return label.astype(np.float64)


def transform_label(label: np.ndarray, transforms: T.TransformList) -> torch.Tensor:
    """A label map of an original image moved onto a training sample, as the mapper moves
    a sample's labels: (H, W) integer array -> (h, w) long tensor (before padding).

    Args:
        label (np.ndarray): (H, W) labels of the original image (uint8 or wider ints).
        transforms (TransformList): the sample's "transforms".
    """
    moved = transforms.apply_segmentation(label_for_transforms(label))
    return torch.as_tensor(np.ascontiguousarray(moved).astype(np.int64))


@MAPPER_REGISTRY.register(name="ovseg_semantic")
class SemanticDatasetMapper:
    """Map a semantic-segmentation dataset dict to a model input.

    Reads the image and its label PNG, remaps labels for the zero-shot setting (training
    only), applies the augmentations, pads to the size divisibility (training only) and
    attaches the vocabulary the label ids refer to. The output holds "image" (uint8 Tensor
    (3, H, W) in the image format), "sem_seg" (long Tensor (H, W), ignore = ignore_label;
    absent in test when the dataset has no labels), "pseudo_sem_seg" (same, when the dict
    has "pseudo_sem_seg_file_name", verified against "pseudo_sem_seg_sha256" when given;
    indices of "vocabulary" when the mapper has a ``pseudo_label_map``), "height"/"width"
    (original size), "file_name", "vocabulary" (list[str]), in training "transforms" (the
    TransformList applied to the sample), in test "dataset_name" when the mapper has one.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: Sequence[T.Augmentation | T.Transform],
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
        vocabulary: Sequence[str],
        label_map: Optional[np.ndarray] = None,
        pseudo_label_map: Optional[np.ndarray] = None,
        num_classes: Optional[int] = None,
        pseudo_num_classes: Optional[int] = None,
        image_pad_value: int = 0,
        crop_count_table: Optional[np.ndarray] = None,
        dataset_name: str = "",
    ):
        """
        Args:
            is_train (bool): training mapping (remap, padding) or test mapping.
            augmentations: augmentations and transforms, applied in order.
            image_format (str): an image format of ``detection_utils.read_image``.
            ignore_label (int): the label of ignored pixels, also used for label padding.
            size_divisibility (int): in training, pad images and labels (at the bottom and
                right) to multiples of this; <= 0 for no padding.
            vocabulary: the class names the output label ids refer to.
            label_map (np.ndarray, optional): training only: table mapping a dataset label
                to the training label (see :func:`zero_shot_label_map`).
            pseudo_label_map (np.ndarray, optional): training only: table mapping a
                pseudo-label store's label to the training label
                (:func:`ovseg.pseudo.store_label_map`); None = pseudo-labels kept as read.
            num_classes (int, optional): the dataset's class count K: a "sem_seg" file
                value outside [0, K) and not ``ignore_label`` is an error naming the file
                (in every setting, before any remap); None = not checked.
            pseudo_num_classes (int, optional): the same for pseudo-label files (the
                store's vocabulary size).
            image_pad_value (int): the value images are padded with (``INPUT.IMAGE_PAD``).
            crop_count_table (np.ndarray, optional): training only: table mapping a dataset
                label to the label a :class:`~.crop_count.CountedCategoryAreaCrop` counts
                (:func:`crop_count_table`); None = the crop counts the training labels.
            dataset_name (str): test only: the test set, given to every output as
                "dataset_name" (a model reads that set's own split, e.g. FreeSeg, XPM).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.vocabulary = tuple(vocabulary)
        self.label_map = label_map
        self.pseudo_label_map = pseudo_label_map
        self.num_classes = num_classes
        self.pseudo_num_classes = pseudo_num_classes
        self.image_pad_value = int(image_pad_value)
        self.crop_count_table = crop_count_table
        self.dataset_name = "" if is_train else dataset_name
        mode = "training" if is_train else "inference"
        logger.info(
            f"[{type(self).__name__}] {mode}: augmentations {augmentations}; "
            f"{len(self.vocabulary)} classes; label remap: {label_map is not None}"
        )

    @classmethod
    def unresized(
        cls, vocabulary: Sequence[str], *, image_format: str = "RGB", ignore_label: int = 255
    ) -> SemanticDatasetMapper:
        """A test-mode mapper that neither resizes nor pads: outputs keep the image's size
        and carry ``vocabulary``."""
        return cls(
            is_train=False,
            augmentations=[],
            image_format=image_format,
            ignore_label=ignore_label,
            size_divisibility=-1,
            vocabulary=vocabulary,
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: Optional[str] = None):
        if dataset_name is None:
            names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
            if not names:
                split = "TRAIN" if is_train else "TEST"
                raise ValueError(f"No dataset name given and cfg.DATASETS.{split} is empty")
            dataset_name = names[0]
        meta = MetadataCatalog.get(dataset_name)
        ignore_label = meta.get("ignore_label", 255)
        setting = cfg.MODEL.OVSEG.ZERO_SHOT_SETTING
        if setting not in ZERO_SHOT_SETTINGS:
            raise ValueError(
                f"Unknown zero-shot setting {setting!r} (MODEL.OVSEG.ZERO_SHOT_SETTING); "
                f"choose one of {list(ZERO_SHOT_SETTINGS)}"
            )

        count_table = None
        if is_train:
            class_names = meta.get("stuff_classes", None)
            if not class_names:
                raise ValueError(
                    f"Training dataset {dataset_name!r} has no 'stuff_classes' metadata; "
                    "register it with its class names"
                )
            spec = cfg.MODEL.OVSEG.TRAIN_VOCABULARY
            target = resolve_vocabulary(spec).names if spec.strip() else None
            label_map, vocabulary = zero_shot_label_map(
                class_names,
                unseen=meta.get("unseen_classes", None),
                setting=setting,
                ignore_label=ignore_label,
                target_names=target,
                dataset_name=dataset_name,
            )
            # a store's labels index its own vocabulary: the model gets training indices
            pseudo_label_map = store_label_map(cfg, vocabulary, ignore_label)
            pseudo_classes = store_class_count(cfg)
            crop = cfg.INPUT.CROP
            count_table = crop_count_table(
                crop.CATEGORY_COUNT,
                class_names,
                unseen=meta.get("unseen_classes", None),
                label_map=label_map,
                ignore_label=ignore_label,
                constrained=crop.ENABLED and crop.SINGLE_CATEGORY_MAX_AREA < 1.0,
                dataset_name=dataset_name,
            )
            augs = training_augmentations(cfg, ignore_label, counted=count_table is not None)
        else:
            augs = [inference_resize(cfg)]
            label_map = pseudo_label_map = pseudo_classes = None
            vocabulary = resolve_vocabulary(cfg.MODEL.OVSEG.TEST_VOCABULARY, meta).names
            class_names = meta.get("stuff_classes", None)
            if class_names and tuple(n.strip() for n in class_names) != vocabulary:
                logger.warning(
                    f"Test vocabulary ({len(vocabulary)} names) differs from the classes of "
                    f"{dataset_name!r}; its labels still refer to the dataset's classes"
                )
        divisibility, pad_value = image_padding(cfg)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "size_divisibility": divisibility,
            "image_pad_value": pad_value,
            "vocabulary": vocabulary,
            "label_map": label_map,
            "pseudo_label_map": pseudo_label_map,
            "num_classes": len(class_names) if class_names else None,
            "pseudo_num_classes": pseudo_classes,
            "crop_count_table": count_table,
            "dataset_name": dataset_name,
        }

    def _read_label(self, path: Optional[str], image: np.ndarray, key: str):
        """Read a label PNG as an (H, W) integer array, its values checked."""
        if path is None:
            return None
        label = read_label(path)
        if label.ndim == 3 and label.shape[2] == 1:
            label = label[:, :, 0]
        if label.ndim != 2:
            raise ValueError(
                f"{key} {path!r} has shape {label.shape}; expected a single-channel label "
                "image (PNG mode L, P or I) of class ids"
            )
        if label.shape != image.shape[:2]:
            raise LabelSizeError(
                f"{key} {path!r} is {label.shape[1]}x{label.shape[0]} (WxH) but its image is "
                f"{image.shape[1]}x{image.shape[0]}; a label must have its image's size: "
                "convert the label again, or remove the image and its label from the dataset"
            )
        k = self.num_classes if key == "sem_seg_file_name" else self.pseudo_num_classes
        if k is not None:
            check_label_range(label, k, self.ignore_label, path)
        return label

    @staticmethod
    def _remap(label: np.ndarray, table: np.ndarray, path: str) -> np.ndarray:
        if label.dtype != np.uint8 and (label.min() < 0 or label.max() >= len(table)):
            raise ValueError(
                f"Label file {path!r} has values in [{label.min()}, {label.max()}], outside "
                f"the {len(table)} entries of the label map"
            )
        if label.dtype == np.uint8 and table.dtype == np.uint8 and len(table) == 256:
            return cv2.LUT(label, table)  # the same lookup, without numpy's fancy indexing
        return table[label]

    def _crop_counts(self, sem_seg, path, file_name: str) -> np.ndarray:
        """The labels the crop counts: the dataset's labels through ``crop_count_table``."""
        if sem_seg is None:
            raise ValueError(
                f"Training sample {file_name!r} has no 'sem_seg_file_name', but "
                "INPUT.CROP.CATEGORY_COUNT counts the dataset's labels; use 'training' (the "
                "crop then counts the labels it crops)"
            )
        return label_for_transforms(self._remap(sem_seg, self.crop_count_table, path))

    def identity(self) -> dict:
        """What every output carries: its "vocabulary" and, in test, its "dataset_name"."""
        named = {"dataset_name": self.dataset_name} if self.dataset_name else {}
        return {"vocabulary": list(self.vocabulary), **named}

    def _pad(self, tensor: torch.Tensor, value: int) -> torch.Tensor:
        h, w = tensor.shape[-2:]
        d = self.size_divisibility
        pad_h, pad_w = (-h) % d, (-w) % d
        if pad_h == 0 and pad_w == 0:
            return tensor
        return F.pad(tensor, (0, pad_w, 0, pad_h), value=value).contiguous()

    def __call__(self, dataset_dict: dict) -> dict:
        """One image in detectron2's dataset format ("file_name", optional "sem_seg_file_name"
        and "pseudo_sem_seg_file_name") -> the model input described in the class docstring."""
        dataset_dict = dict(dataset_dict)  # the caller's dict is left unchanged
        file_name = dataset_dict["file_name"]
        image = read_image(file_name, format=self.image_format)
        utils.check_image_size(dataset_dict, image)  # sets "height"/"width" if absent

        sem_seg_file = dataset_dict.pop("sem_seg_file_name", None)
        pseudo_file = dataset_dict.pop("pseudo_sem_seg_file_name", None)
        pseudo_sha256 = dataset_dict.pop("pseudo_sem_seg_sha256", None)
        if pseudo_file is not None and pseudo_sha256 is not None:
            verify_file(pseudo_file, pseudo_sha256, "the 'command' in the store's manifest.json")
        sem_seg = self._read_label(sem_seg_file, image, "sem_seg_file_name")
        pseudo = self._read_label(pseudo_file, image, "pseudo_sem_seg_file_name")
        if self.is_train and sem_seg is None and pseudo is None:
            raise ValueError(
                f"Training sample {file_name!r} has neither 'sem_seg_file_name' nor "
                "'pseudo_sem_seg_file_name'; a training dataset needs labels"
            )
        counts = None
        if self.is_train and self.crop_count_table is not None:
            counts = self._crop_counts(sem_seg, sem_seg_file, file_name)
        if sem_seg is not None and self.is_train and self.label_map is not None:
            # before the augmentations, so the crop's category-area rule sees the targets
            # (unless it counts crop_counts)
            sem_seg = self._remap(sem_seg, self.label_map, sem_seg_file)
        if pseudo is not None and self.is_train and self.pseudo_label_map is not None:
            pseudo = self._remap(pseudo, self.pseudo_label_map, pseudo_file)
        sem_seg, pseudo = label_for_transforms(sem_seg), label_for_transforms(pseudo)

        if counts is None:
            aug_input = T.AugInput(image, sem_seg=sem_seg if sem_seg is not None else pseudo)
        else:  # the crop decides its window on the counted labels
            aug_input = CropCountInput(image, sem_seg=sem_seg, crop_counts=counts)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        if sem_seg is not None:
            sem_seg = aug_input.sem_seg
            if pseudo is not None:
                pseudo = transforms.apply_segmentation(pseudo)
        else:
            pseudo = aug_input.sem_seg

        image_t = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        labels = {
            key: torch.as_tensor(np.ascontiguousarray(label).astype(np.int64))
            for key, label in (("sem_seg", sem_seg), ("pseudo_sem_seg", pseudo))
            if label is not None
        }
        if self.is_train:
            # the sample's own pixels before any padding (a model's self-training labels
            # none of the padding, whatever the pad value)
            dataset_dict["content_size"] = tuple(image_t.shape[-2:])
        if self.is_train and self.size_divisibility > 0:
            image_t = self._pad(image_t, self.image_pad_value)
            labels = {key: self._pad(label, self.ignore_label) for key, label in labels.items()}

        dataset_dict["image"] = image_t
        dataset_dict.update(labels)
        dataset_dict.update(self.identity())
        if self.is_train:
            # the TransformList applied to this sample (picklable): labels of the original
            # image (a teacher's, "online") move onto the sample with it (transform_label)
            dataset_dict["transforms"] = transforms
        return dataset_dict
