"""XPM's training mapper: seen ground truth plus the image's caption pseudo instances.

Training outputs carry ``"instances"`` (detectron2 ``Instances`` of the padded sample size)
with, per target:

- ``gt_classes`` (long (N,)): indices of the sample's ``"vocabulary"``, the FULL vocabulary
  (seen and unseen names: MODEL.OVSEG.TRAIN_VOCABULARY, else the pseudo-label store's, else
  the dataset's classes);
- ``gt_masks`` (``BitMasks`` (N, H, W)), ``gt_boxes`` (``Boxes``, XYXY): a ground-truth box
  is its mask's extent, a pseudo box the teacher's box moved by the same transforms;
- ``gt_is_pseudo`` (bool (N,)) and ``gt_scores`` (float (N,): 1 for ground truth, the
  pseudo score sigmoid(cosine) otherwise);
- with MODEL.XPM.GT_POLYGONS, ``gt_polygons`` (``PolygonMasks``: the ground truth's COCO
  polygons, ``[]`` for pseudo rows) and ground-truth boxes from the annotations' ``bbox``
  (:mod:`.gt_polygons`).

With MODEL.XPM.CAPTION_VOCABULARY "lvis" (XPM's caption vocabulary) a sample also carries
``"pseudo_vocabulary"`` (the 1203 LVIS names) and the ``gt_classes`` of its pseudo instances
index that list instead; the store must have been made with "lvis" too (and a store made
with "train" must be read with "train").

Ground truth of the dataset's unseen classes is removed (XPM's setting: unseen classes have
no masks); crowd regions are never targets; pseudo instances come from the records a loader
attaches from an instance store (DATASETS.PSEUDO_LABELS, ``"pseudo_instances_file_name"``)
and are kept whatever their class, as XPM (``st_generalized_rcnn.py:218-275``), unless they
score below MODEL.XPM.PSEUDO_SCORE_THRESHOLD. Targets emptied by the crop are dropped. In
test mode the mapper is the instance mapper.

With MODEL.XPM.PSEUDO_LABEL_SOURCE "online" no store is read: every sample carries its
image's ``"captions"`` (list[str], from the dataset dict; a dataset without them is refused)
and the student labels them in the training step (ovseg/modeling/meta_arch/xpm_online.py).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances

from ...pseudo.instance_store import InstancePseudoLabelStore, read_record
from ...pseudo.instances import decode_mask
from ...vocab import normalize_name
from ..captions.settings import (
    caption_vocabulary,
    check_text_space,
    lvis_pseudo_vocabulary,
    xpm_pseudo_label_source,
    xpm_vocabulary,
)
from ..image_io import read_image
from .build import MAPPER_REGISTRY
from .gt_polygons import add_gt_polygons, drop_empty_boxes
from .mask_targets import InstanceDatasetMapper
from .semantic import label_for_transforms

__all__ = ["XPMInstanceDatasetMapper", "seen_label_map"]

# (mask (H, W) bool, class, box XYXY or None, score)
Target = Tuple[np.ndarray, int, Optional[Sequence[float]], float]


def seen_label_map(
    class_names: Sequence[str],
    unseen: Sequence[str],
    vocabulary: Sequence[str],
    ignore_label: int,
    dataset_name: str = "",
) -> np.ndarray:
    """Table from dataset class ids to ``vocabulary`` indices; unseen classes -> ignore.

    Raises:
        ValueError: a seen dataset class is not in the vocabulary.
    """
    index = {normalize_name(n): i for i, n in enumerate(vocabulary)}
    drop = {normalize_name(n) for n in unseen}
    missing = [n for n in class_names if normalize_name(n) not in index.keys() | drop]
    if missing:
        raise ValueError(
            f"classes {missing} of dataset {dataset_name!r} are not in the XPM vocabulary "
            f"{list(vocabulary)}; set MODEL.OVSEG.TRAIN_VOCABULARY to the full vocabulary"
        )
    table = np.full(max(256, len(class_names), ignore_label + 1), ignore_label, dtype=np.int64)
    for k, name in enumerate(class_names):
        if normalize_name(name) not in drop:
            table[k] = index[normalize_name(name)]
    return table


@MAPPER_REGISTRY.register(name="ovseg_xpm_instance")
class XPMInstanceDatasetMapper(InstanceDatasetMapper):
    """COCO-format instance dicts -> seen ground truth + caption pseudo instances."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        pseudo_score_threshold: float = 0.0,
        pseudo_vocabulary: Optional[Sequence[str]] = None,
        online: bool = False,
        **kwargs,
    ):
        """
        Args:
            is_train (bool): training (targets, pseudo instances) or test mapping.
            pseudo_score_threshold (float): pseudo instances scoring below are dropped.
            pseudo_vocabulary: the names pseudo instances' classes index (given to each
                sample as ``"pseudo_vocabulary"``); None = ``vocabulary``.
            online (bool): the student makes the pseudo instances (MODEL.XPM.
                PSEUDO_LABEL_SOURCE "online"): samples carry their ``"captions"``.
            kwargs: the instance mapper's arguments; in training ``vocabulary`` is the full
                one and ``label_map`` a :func:`seen_label_map`.
        """
        super().__init__(is_train, **kwargs)
        self.pseudo_score_threshold = float(pseudo_score_threshold)
        self.pseudo_vocabulary = None if pseudo_vocabulary is None else tuple(pseudo_vocabulary)
        self.online = bool(online)
        names = self.vocabulary if pseudo_vocabulary is None else pseudo_vocabulary
        self._index = {normalize_name(n): i for i, n in enumerate(names)}

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: Optional[str] = None):
        plain = cfg.clone()
        plain.defrost()
        plain.DATASETS.PSEUDO_LABELS = ""  # the semantic mapper would read it as label PNGs
        plain.MODEL.OVSEG.ZERO_SHOT_SETTING = "none"  # unseen removal is done here
        plain.MODEL.OVSEG.TRAIN_VOCABULARY = ""
        ret = super().from_config(plain, is_train, dataset_name)
        ret["pseudo_score_threshold"] = cfg.MODEL.XPM.PSEUDO_SCORE_THRESHOLD
        if not is_train:
            return ret
        ret["online"] = xpm_pseudo_label_source(cfg) == "online"  # refuses a store beside it
        name = dataset_name or cfg.DATASETS.TRAIN[0]
        meta = MetadataCatalog.get(name)
        root = cfg.DATASETS.PSEUDO_LABELS
        store = InstancePseudoLabelStore.open(root) if root else None
        lvis = caption_vocabulary(cfg, store, root) == "lvis"
        check_text_space(cfg, store, root)
        vocab = xpm_vocabulary(cfg, name, None if lvis else store)
        if lvis:
            ret["pseudo_vocabulary"] = lvis_pseudo_vocabulary(store, root)
        elif store is not None:
            have = {normalize_name(n) for n in vocab.names}
            stray = [n for n in store.vocabulary if normalize_name(n) not in have]
            if stray:
                raise ValueError(
                    f"pseudo-label store {root!r} labels classes {stray} outside the training "
                    f"vocabulary {list(vocab.names)} (MODEL.OVSEG.TRAIN_VOCABULARY)"
                )
        ret["vocabulary"] = vocab.names
        ret["label_map"] = seen_label_map(
            meta.stuff_classes, vocab.unseen, vocab.names, ret["ignore_label"], name
        )
        return ret

    def _pseudo_targets(self, dataset_dict: dict, size: Tuple[int, int]) -> List[Target]:
        """The image's stored pseudo instances at the original size (none without a record)."""
        path = dataset_dict.pop("pseudo_instances_file_name", None)
        digest = dataset_dict.pop("pseudo_instances_sha256", "")
        if path is None:
            return []
        record = read_record(path, digest)
        if (record["height"], record["width"]) != tuple(size):
            raise ValueError(
                f"pseudo-label record {path!r} is for a {record['height']}x{record['width']} "
                f"image but {dataset_dict['file_name']!r} is {size[0]}x{size[1]}; regenerate it"
            )
        out = []
        for inst in record["instances"]:
            if inst.score < self.pseudo_score_threshold:
                continue
            cls = self._index.get(normalize_name(inst.category))
            if cls is None:
                raise ValueError(
                    f"pseudo instance class {inst.category!r} in {path!r} is not in the "
                    f"pseudo-label vocabulary {list(self._index)[:10]}... of this config"
                )
            out.append((decode_mask(inst.mask), cls, inst.box, float(inst.score)))
        return out

    def __call__(self, dataset_dict: dict) -> dict:
        if not self.is_train:
            return super().__call__(dataset_dict)
        dataset_dict = dict(dataset_dict)
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        gt: List[Target] = [(m, c, None, 1.0) for m, c in self._segments(dataset_dict, image)]
        geometry = self._gt_geometry(dataset_dict, image)
        pseudo = self._pseudo_targets(dataset_dict, image.shape[:2])
        sem_seg = np.full(image.shape[:2], self.ignore_label, dtype=np.int64)
        for mask, cls, _, _ in gt:  # ground truth only: the crop's category-area rule
            sem_seg[mask] = cls
        aug_input = T.AugInput(image, sem_seg=label_for_transforms(sem_seg))
        transforms = self.augmentations(aug_input)
        image_t = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        sem_t = torch.as_tensor(np.ascontiguousarray(aug_input.sem_seg).astype(np.int64))
        size = tuple(image_t.shape[-2:])
        if self.size_divisibility > 0:
            image_t = self._pad(image_t, self.image_pad_value)
            sem_t = self._pad(sem_t, self.ignore_label)
        for key in ("sem_seg_file_name", "pan_seg_file_name", "segments_info", "annotations"):
            dataset_dict.pop(key, None)
        dataset_dict.update(image=image_t, sem_seg=sem_t, vocabulary=list(self.vocabulary))
        if self.pseudo_vocabulary is not None:
            dataset_dict["pseudo_vocabulary"] = list(self.pseudo_vocabulary)
        if self.online:
            dataset_dict["captions"] = _captions_of(dataset_dict)
        dataset_dict["instances"] = self._targets(gt + pseudo, len(gt), transforms, size, geometry)
        dataset_dict["transforms"] = transforms
        return dataset_dict

    def _targets(
        self, targets: List[Target], num_gt: int, transforms, size, geometry=None
    ) -> Instances:
        """Targets moved onto the sample, padded, the emptied ones dropped; with
        ``geometry`` (the ground truth's :class:`~.gt_polygons.GTGeometry`) ``gt_polygons``
        and the annotations' boxes added."""
        h, w = size
        masks, boxes, classes, pseudo, scores, rows = [], [], [], [], [], []
        for i, (mask, cls, box, score) in enumerate(targets):
            moved = torch.from_numpy(transforms.apply_segmentation(mask.astype(np.uint8)) > 0)
            if not moved.any():
                continue
            rows.append(i)
            if box is None:
                box_t = BitMasks(moved[None]).get_bounding_boxes().tensor[0]
            else:
                box_t = torch.as_tensor(transforms.apply_box(np.asarray([box]))[0]).float()
                box_t = torch.minimum(box_t.clamp(min=0), torch.tensor([w, h, w, h]).float())
            masks.append(self._pad(moved, 0) if self.size_divisibility > 0 else moved)
            boxes.append(box_t.float())
            classes.append(cls)
            pseudo.append(i >= num_gt)
            scores.append(score)
        padded = tuple(masks[0].shape) if masks else self._padded_size(size)
        out = Instances(padded)
        out.gt_masks = BitMasks(
            torch.stack(masks) if masks else torch.zeros((0, *padded), dtype=torch.bool)
        )
        out.gt_boxes = Boxes(torch.stack(boxes) if boxes else torch.zeros((0, 4)))
        out.gt_classes = torch.tensor(classes, dtype=torch.int64)
        out.gt_is_pseudo = torch.tensor(pseudo, dtype=torch.bool)
        out.gt_scores = torch.tensor(scores, dtype=torch.float32)
        if geometry is not None:
            add_gt_polygons(out, geometry, rows, transforms, size, self.legacy_boxes)
        return drop_empty_boxes(out, geometry, rows, self.legacy_boxes)

    def _padded_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        d = self.size_divisibility
        if d <= 0:
            return tuple(size)  # type: ignore[return-value]
        return (size[0] + (-size[0]) % d, size[1] + (-size[1]) % d)


def _captions_of(dataset_dict: dict) -> List[str]:
    """The image's captions, for the student's online pseudo-labels."""
    captions = dataset_dict.get("captions")
    if captions is None:
        raise ValueError(
            f"{dataset_dict.get('file_name', '')!r} has no 'captions': MODEL.XPM."
            "PSEUDO_LABEL_SOURCE 'online' labels caption nouns; train on a dataset registered "
            "with its captions (e.g. coco_2017_train_instance_48_17, toy_world_instance_train)"
        )
    return [str(c) for c in captions]
