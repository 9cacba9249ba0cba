"""FreeSeg's region mapper (ovseg_region) on a tiny semantic split whose image encodes its
labels: the crop holds the region's box expanded by the ratio, training crops have the
configured size and keep image and mask aligned through the random crop and the flip, test
crops are the padded centre, and the split's region test set lists every class region once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ovseg_testing import tiny_freeseg_prompt_cfg
from PIL import Image
from torchvision.transforms import RandomResizedCrop as TorchvisionCrop

from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T

from ovseg.data import build_dataset_mapper
from ovseg.data.dataset_mappers.region_crop import (
    CenterCropPad,
    CropAroundMask,
    RandomResizedCrop,
    expanded_box,
)
from ovseg.data.datasets.common import register_split
from ovseg.data.datasets.region_eval_sets import register_region_eval_set
from ovseg.data.region_sampling import region_dataset_for

NAME = "tiny_region_sem_seg"
CLASSES = ["ground", "bar", "box"]


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    """40x40: ground (0) everywhere, a bar (1) at rows 10-19, cols 5-24, a box (2, unseen) at
    rows 30-35, cols 30-35; red = 250 on the bar, green = 6 * column."""
    root = tmp_path_factory.mktemp("regions")
    label = np.zeros((40, 40), np.uint8)
    label[10:20, 5:25], label[30:36, 30:36] = 1, 2
    image = np.zeros((40, 40, 3), np.uint8)
    image[..., 0] = np.where(label == 1, 250, 10)
    image[..., 1] = np.arange(40)[None] * 6
    Image.fromarray(image).save(root / "a.png")
    Image.fromarray(label).save(root / "a_label.png")
    record = {"file_name": str(root / "a.png"), "sem_seg_file_name": str(root / "a_label.png")}
    register_split(
        NAME,
        lambda: [dict(record, image_id="a", height=40, width=40)],
        stuff_classes=CLASSES,
        ignore_label=255,
        evaluator_type="ovseg_sem_seg",
        unseen_classes=["box"],
        seen_classes=["ground", "bar"],
    )
    yield register_region_eval_set(NAME)
    for name in (NAME, NAME + "_regions"):
        DatasetCatalog.remove(name)


def _cfg(tmp_path, *opts):
    return tiny_freeseg_prompt_cfg(
        tmp_path / "cache",
        "DATASETS.TRAIN", f"('{NAME}',)",
        "INPUT.DATASET_MAPPER_NAME", "ovseg_region",
        "INPUT.FORMAT", "RGB",
        "MODEL.FREESEG.PROMPT_TRAIN_SIZE", "(18, 14)",
        "MODEL.FREESEG.PROMPT_TEST_SIZE", "24",
        *opts,
    )  # fmt: skip


def _bar_record():
    (bar,) = [r for r in region_dataset_for_all() if r["region_class"] == "bar"]
    return bar


def region_dataset_for_all():
    return DatasetCatalog.get(NAME + "_regions")


def test_expanded_box_and_crop_hold_the_mask():
    mask = np.zeros((40, 40), bool)
    mask[10:14, 20:24] = True
    assert expanded_box(mask, 1.0) == (20, 10, 4, 4)
    assert expanded_box(mask, 2.0) == (18, 8, 8, 8)  # doubled about the centre (22, 12)
    assert expanded_box(mask, 1.5) == (19, 9, 6, 6)
    edge = np.zeros((40, 40), bool)
    edge[30:, 36:] = True  # touches the border: clipped, the last row and column kept
    assert expanded_box(edge, 3.0) == (32, 20, 8, 20)  # centre (38, 35), 12x30 cut at 40
    assert expanded_box(np.zeros((4, 4), bool), 1.0) is None
    aug = T.AugInput(np.zeros((40, 40, 3), np.uint8), sem_seg=mask.astype(np.uint8))
    T.AugmentationList([CropAroundMask(2.0)])(aug)
    assert aug.sem_seg.shape == (8, 8) and aug.sem_seg.sum() == 16
    assert aug.sem_seg[2:6, 2:6].all()
    for bad in (0, 0.5, float("nan")):  # one rule with the test-time crops: the box grows
        with pytest.raises(ValueError, match="MASK_EXPAND_RATIO must be >= 1"):
            CropAroundMask(bad)


def test_random_resized_crop_and_centre_crop_sizes():
    np.random.seed(0)
    image = np.zeros((30, 50, 3), np.uint8)
    for _ in range(5):
        assert RandomResizedCrop((18, 14)).get_transform(image).apply_image(image).shape == (
            18,
            14,
            3,
        )
    small = np.full((6, 4, 3), 7, np.uint8)
    out = CenterCropPad((10, 10)).get_transform(small).apply_image(small)
    assert out.shape == (10, 10, 3) and (out == 7).sum() == 6 * 4 * 3
    assert (out[2:8, 3:7] == 7).all()  # centred: 2 rows and 3 columns of padding before
    big = np.arange(100, dtype=np.uint8).reshape(10, 10, 1).repeat(3, -1)
    assert (CenterCropPad((4, 4)).get_transform(big).apply_image(big)[0, 0] == 33).all()


@pytest.mark.parametrize("height, width", [(200, 10), (10, 200), (300, 12)])
def test_random_resized_crop_of_a_thin_region_is_torchvision_fallback(height, width):
    # a region over 1:15 (a pole, a fence) fails every draw: the largest centre crop within
    # the ratio, as torchvision's (official augmentations.py:92-152)
    np.random.seed(0)
    x, y, w, h = RandomResizedCrop((8, 8))._window(height, width)
    i, j, th, tw = TorchvisionCrop.get_params(
        torch.zeros(3, height, width), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
    )
    assert (y, x, h, w) == (i, j, th, tw)
    assert min(w, h) == min(height, width)


def test_region_test_set_lists_every_class_region_once(tiny_split):
    records = region_dataset_for_all()
    assert [(r["task"], r["region_class"]) for r in records] == [
        ("sem_seg", "ground"),
        ("sem_seg", "bar"),
        ("sem_seg", "box"),
    ]
    assert records == region_dataset_for_all()  # deterministic


def test_test_crop_is_the_padded_centre_of_the_box(tiny_split, tmp_path):
    mapper = build_dataset_mapper(_cfg(tmp_path), False, tiny_split)
    out = {r["region_class"]: mapper(dict(r)) for r in region_dataset_for_all()}
    box = out["box"]
    assert box["image"].shape == (3, 24, 24) and box["vocabulary"] == CLASSES
    assert int(box["instances"].gt_classes[0]) == 2
    mask = box["instances"].gt_masks[0]
    assert mask.sum() == 36 and mask[9:15, 9:15].all()  # 6x6 box, padded 9 each side
    assert (box["image"][:, ~mask] == 0).all()  # the padding is black
    bar = out["bar"]  # 10x20 box: padded rows, all of its 20 columns
    assert bar["instances"].gt_masks[0].sum() == 200
    assert (bar["image"][0][bar["instances"].gt_masks[0]] == 250).all()


def test_expand_ratio_widens_the_crop(tiny_split, tmp_path):
    cfg = _cfg(tmp_path, "MODEL.FREESEG.MASK_EXPAND_RATIO", "1.5")
    mapper = build_dataset_mapper(cfg, False, tiny_split)
    mapper.augmentations = T.AugmentationList([CropAroundMask(1.5)])  # no centre crop
    x = mapper(dict(_bar_record()))
    assert x["image"].shape == (3, 16, 30)  # the 10x20 box times 1.5, about its centre
    mask = x["instances"].gt_masks[0]
    assert mask.sum() == 200 and mask[3:13, 5:25].all()


def test_training_crops_keep_image_and_mask_aligned(tiny_split, tmp_path):
    cfg = _cfg(tmp_path, "MODEL.FREESEG.MASK_EXPAND_RATIO", "1.5")
    mapper = build_dataset_mapper(cfg, True, tiny_split)
    records = region_dataset_for(cfg)
    assert {r["region_class"] for r in records} == {"ground", "bar", "box"}
    record = _bar_record()
    np.random.seed(0)
    kept = 0
    for _ in range(30):
        x = mapper(dict(record))
        if x is None:  # the random crop missed the bar: the loader draws another record
            continue
        kept += 1
        assert x["image"].shape == (3, 18, 14) and int(x["instances"].gt_classes[0]) == 1
        mask, red = x["instances"].gt_masks[0], x["image"][0]
        agree = ((red > 128) == mask).float().mean()  # bilinear image, nearest mask
        assert agree > 0.9, agree
    assert kept > 10
    # the flip moves image and mask together: a crop of the box alone, flipped
    mapper.augmentations = T.AugmentationList([CropAroundMask(1.5), T.RandomFlip(prob=1.0)])
    x = mapper(dict(record))
    green = x["image"][1]
    assert (green[0] == 6 * np.arange(29, -1, -1)).all()  # columns 0-29, reversed
    assert ((x["image"][0] == 250) == x["instances"].gt_masks[0]).all()
