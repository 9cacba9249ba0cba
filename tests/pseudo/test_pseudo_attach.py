"""Training reads the store: dataset dicts get label files, the mapper keeps them aligned."""

import numpy as np
import pytest
import torch
from ovseg_testing import (
    NAMES5,
    make_store,
    padded_train_mapper,
    position_pattern,
    write_random_images,
)
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg import add_ovseg_config
from ovseg.pseudo import attach_pseudo_labels, pseudo_labelled_dataset_dicts


def test_attach_adds_label_files_and_names_the_first_missing_image(tmp_path):
    dicts = write_random_images(tmp_path / "img", n=3)
    store = make_store(tmp_path / "s", command="python tools/generate_pseudo_labels.py --y")
    for d in dicts:
        store.write(d["image_id"], np.zeros((12, 17), int), np.ones((12, 17)))
    out = attach_pseudo_labels(dicts, store)
    assert [o["pseudo_sem_seg_file_name"] for o in out] == [
        store.path_for(d["image_id"]) for d in dicts
    ]
    assert all("pseudo_sem_seg_file_name" not in d for d in dicts)  # inputs untouched

    extra = {"file_name": str(tmp_path / "img" / "zzz.png"), "image_id": "zzz"}
    with pytest.raises(FileNotFoundError) as e:
        attach_pseudo_labels([*dicts, extra, {**extra, "image_id": "zzz2"}], store)
    msg = str(e.value)
    assert "image_id 'zzz'" in msg and "2 of 5 images" in msg
    assert "python tools/generate_pseudo_labels.py --y" in msg


def _sample(tmp_path, num_classes, gt_value, pseudo_value):
    """One image with a position-pattern label and a pseudo-label derived from it."""
    names = [f"class {i}" for i in range(num_classes)]
    dtype = np.uint8 if num_classes <= 255 else np.uint16
    gt = position_pattern(30, 36, num_classes)
    image = np.random.default_rng(0).integers(0, 256, (30, 36, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(gt.astype(dtype)).save(tmp_path / "a_gt.png")
    store = make_store(tmp_path / "s", names=names)
    pseudo = pseudo_value(gt)
    pseudo[:3, :4] = store.ignore_value  # some unconfident pixels
    store.write("a", pseudo, np.full(gt.shape, 0.9))
    d = {"file_name": str(tmp_path / "a.png"), "image_id": "a"}
    if gt_value:
        d["sem_seg_file_name"] = str(tmp_path / "a_gt.png")
    return names, store, attach_pseudo_labels([d], store)[0]


@pytest.mark.parametrize("num_classes", [200, 300])
def test_mapper_keeps_pseudo_labels_aligned_through_resize_crop_flip_pad(tmp_path, num_classes):
    def f(label):  # a pixel-wise map, so alignment survives any geometric transform
        return (label * 7 + 3) % num_classes

    names, store, d = _sample(tmp_path, num_classes, True, f)
    ignore = store.ignore_value
    mapper = padded_train_mapper(names, ignore_label=ignore)
    for seed in range(3):  # different crops
        torch.manual_seed(seed)
        np.random.seed(seed)
        out = mapper(d)
        sem, pseudo = out["sem_seg"], out["pseudo_sem_seg"]
        assert sem.shape == pseudo.shape == (32, 32) == tuple(out["image"].shape[-2:])
        assert sem.dtype == pseudo.dtype == torch.int64
        padded = sem == ignore
        assert padded[20:, :].all() and padded[:, 24:].all() and not padded[:20, :24].any()
        assert (pseudo[padded] == ignore).all()
        valid = ~padded & (pseudo != ignore)
        assert valid.sum() > 300
        torch.testing.assert_close(pseudo[valid], f(sem[valid]), rtol=0, atol=0)


def test_annotation_free_sample_has_only_pseudo_labels(tmp_path):
    names, store, d = _sample(tmp_path, 200, False, lambda gt: gt)
    out = padded_train_mapper(names)(d)
    assert "sem_seg" not in out and out["pseudo_sem_seg"].shape == (32, 32)
    assert (out["pseudo_sem_seg"][20:] == 255).all()


@pytest.fixture
def registered(tmp_path):
    names = []

    def register(name, dicts, ignore_label=255):
        DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
        MetadataCatalog.get(name).set(ignore_label=ignore_label, stuff_classes=NAMES5)
        names.append(name)

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(train, store_root=""):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.DATASETS.TRAIN = train
    cfg.DATASETS.PSEUDO_LABELS = store_root
    return cfg


def test_config_helper_attaches_or_refuses(tmp_path, registered):
    dicts = write_random_images(tmp_path / "img", n=2)
    registered("pseudo_test_train", dicts)
    registered("pseudo_test_other", dicts)
    store = make_store(tmp_path / "s", dataset="pseudo_test_train")
    for d in dicts:
        store.write(d["image_id"], np.zeros((12, 17), int), np.ones((12, 17)))

    plain = pseudo_labelled_dataset_dicts(_cfg(("pseudo_test_train",)))
    assert len(plain) == 2 and all("pseudo_sem_seg_file_name" not in d for d in plain)
    got = pseudo_labelled_dataset_dicts(_cfg(("pseudo_test_train",), str(store.root)))
    assert sorted(d["pseudo_sem_seg_file_name"] for d in got) == sorted(
        store.path_for(d["image_id"]) for d in dicts
    )

    with pytest.raises(ValueError, match="dataset: store has 'pseudo_test_train', expected"):
        pseudo_labelled_dataset_dicts(_cfg(("pseudo_test_other",), str(store.root)))
    with pytest.raises(ValueError, match="holds the labels of one dataset"):
        two = ("pseudo_test_train", "pseudo_test_other")
        pseudo_labelled_dataset_dicts(_cfg(two, str(store.root)))

    big = make_store(
        tmp_path / "big", names=[f"c{i}" for i in range(300)], dataset="pseudo_test_train"
    )
    with pytest.raises(ValueError, match="ignored pixels with 65535.*ignore_label 255"):
        pseudo_labelled_dataset_dicts(_cfg(("pseudo_test_train",), str(big.root)))
