"""The training mapper's fast steps give the bytes of the per-pixel versions they replace."""

import uuid

import numpy as np
import pytest
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T

from ovseg import add_ovseg_config
from ovseg.benchmark.mapper import per_pixel_distortion, reference_mapper
from ovseg.data.dataset_mappers import build_dataset_mapper
from ovseg.data.dataset_mappers.color_aug import ColorAugSSD, PhotometricDistortTransform
from ovseg.data.dataset_mappers.fast_crop import CategoryAreaCrop


def test_photometric_lookup_tables_match_per_pixel_arithmetic():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    np.random.seed(0)
    for i in range(200):
        tfm = ColorAugSSD(img_format=("RGB", "BGR")[i % 2]).get_transform(image)
        view = image[::-1, 3:] if i % 3 == 0 else image  # strided views as the crops give
        assert np.array_equal(tfm.apply_image(view), per_pixel_distortion(tfm, view)), tfm
    # every change at once, both orders, extreme values
    for last in (False, True):
        tfm = PhotometricDistortTransform(-32, 1.5, 1.5, -18, contrast_last=last)
        assert np.array_equal(tfm.apply_image(image), per_pixel_distortion(tfm, image))


@pytest.mark.parametrize("ignored", [255, None, 0])
def test_category_crop_matches_detectron2(ignored):
    rng = np.random.default_rng(1)
    ours = CategoryAreaCrop("absolute", (24, 24), 0.75, ignored)
    theirs = T.RandomCrop_CategoryAreaConstraint("absolute", (24, 24), 0.75, ignored)
    for i in range(60):
        # mostly one class, so that several windows are often tried
        label = np.where(rng.random((40, 50)) < 0.85, 3, rng.integers(0, 6, (40, 50)))
        label = label.astype(np.uint8)
        label[:10] = 255 if i % 2 else label[:10]
        image = np.zeros((40, 50, 3), np.uint8)
        np.random.seed(i)
        a = ours.get_transform(image, label)
        state = np.random.get_state()[1].copy()
        np.random.seed(i)
        b = theirs.get_transform(image, label)
        assert (a.x0, a.y0, a.w, a.h) == (b.x0, b.y0, b.w, b.h)
        assert np.array_equal(state, np.random.get_state()[1])  # the same draws


def _draws(seed: int, n: int, h: int, w: int, crop: int):
    """The first ``n`` windows (y0, x0) the crop draws from ``seed``."""
    np.random.seed(seed)
    return [(np.random.randint(h - crop + 1), np.random.randint(w - crop + 1)) for _ in range(n)]


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_crop_fallback_keeps_the_tenth_or_draws_an_eleventh(dtype):
    # one class everywhere: no window holds two, so every try fails
    label = np.full((40, 50), 3, dtype)
    image = np.zeros((40, 50, 3), np.uint8)
    draws = _draws(7, 11, 40, 50, 24)
    for fallback, want in (("last_tried", draws[9]), ("another", draws[10])):
        np.random.seed(7)
        crop = CategoryAreaCrop("absolute", (24, 24), 0.75, 255, fallback=fallback)
        t = crop.get_transform(image, label)
        assert (t.y0, t.x0) == want, fallback
    # a window that passes: the fallback plays no part (two classes, half and half)
    label[:, 25:] = 1
    np.random.seed(7)
    # the first window whose share of class 1 (columns 25 on) is strictly within 1/4 - 3/4
    passing = next(d for d in draws if 6 < d[1] + 24 - 25 < 18)
    a = CategoryAreaCrop("absolute", (24, 24), 0.75, 255, fallback="another")
    t = a.get_transform(image, label)
    assert (t.y0, t.x0) == passing
    with pytest.raises(ValueError, match="FALLBACK 'mmseg' is not one of"):
        CategoryAreaCrop("absolute", (24, 24), 0.75, 255, fallback="mmseg")


@pytest.fixture
def voc_like(tmp_path):
    """Six 60x80 JPEG images with blocky labels of four classes (one unseen) and ignore."""
    name = f"ovseg_test_fast_mapper_{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(6):
        label = np.full((60, 80), rng.integers(0, 4), np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, 40), rng.integers(0, 50)
            label[y : y + 20, x : x + 30] = rng.choice([0, 1, 2, 3, 255])
        image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"{i}.jpg", quality=90)
        Image.fromarray(label).save(tmp_path / f"{i}.png")
        dicts.append({"file_name": str(tmp_path / f"{i}.jpg"), "image_id": i,
                      "sem_seg_file_name": str(tmp_path / f"{i}.png")})  # fmt: skip
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(
        stuff_classes=["a", "b", "c", "d"], unseen_classes=["c"], ignore_label=255
    )
    yield name, dicts
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_mapper_matches_the_per_pixel_mapper(voc_like):
    """ZegCLIP's VOC pipeline (ratio-range resize, 0.75 category crop, photometric
    distortion, flip, inductive remap): the same image, labels and transforms per seed."""
    name, dicts = voc_like
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.OVSEG.ZERO_SHOT_SETTING = "inductive"
    cfg.INPUT.RESIZE_IMG_SCALE = [256, 64]
    cfg.INPUT.RESIZE_RATIO_RANGE = [0.5, 2.0]
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [48, 48]
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75
    cfg.INPUT.COLOR_AUG_SSD = True
    cfg.INPUT.SIZE_DIVISIBILITY = 48
    fast = build_dataset_mapper(cfg, is_train=True)
    augs = fast.augmentations.augs
    assert isinstance(augs[1], CategoryAreaCrop) and isinstance(augs[2], ColorAugSSD)
    reference = reference_mapper(fast)
    assert type(reference.augmentations.augs[1]) is T.RandomCrop_CategoryAreaConstraint
    _assert_same_samples(fast, reference, dicts, seeds=24)


def test_mapper_with_mmsegs_fallback_matches_its_reference(voc_like):
    """With INPUT.CROP.FALLBACK "another" the reference counts with np.unique in the same
    loop: the same bytes per seed."""
    name, dicts = voc_like
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.RESIZE_IMG_SCALE = [256, 64]
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [48, 48]
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.5  # strict: the fallback is often reached
    cfg.INPUT.CROP.FALLBACK = "another"
    fast = build_dataset_mapper(cfg, is_train=True)
    assert fast.augmentations.augs[1].fallback == "another"
    reference = reference_mapper(fast)
    _assert_same_samples(fast, reference, dicts, seeds=12)


def _assert_same_samples(fast, reference, dicts, seeds: int) -> None:
    """Both mappers give the same image, labels and transforms for each seed."""
    for seed in range(seeds):
        d = dicts[seed % len(dicts)]
        np.random.seed(seed)
        a = fast(d)
        np.random.seed(seed)
        b = reference(d)
        assert [vars(t) for t in a["transforms"]] == [vars(t) for t in b["transforms"]]
        assert a["image"].equal(b["image"]) and a["sem_seg"].equal(b["sem_seg"])
