"""INPUT.IMAGE_PAD: the value crops are padded with, by the mapper or (mmseg) by the model;
INPUT.TRAIN_AUGMENTATION "lsj": large-scale jitter, padded by the mapper."""

import uuid

import numpy as np
import pytest
import torch
from ovseg_testing.models import tiny_zegclip_cfg
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ovseg import add_ovseg_config
from ovseg.data.dataset_mappers import build_dataset_mapper
from ovseg.data.dataset_mappers.padding import image_padding
from ovseg.data.dataset_mappers.training_pipeline import training_augmentations

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def dataset(tmp_path):
    """One 20x28 image with labels 0/1 (classes "a", "b")."""
    name = f"ovseg_test_padding_{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    label = (np.arange(28)[None, :] >= 14).astype(np.uint8).repeat(20, 0)
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(label).save(tmp_path / "lbl.png")
    d = {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "lbl.png"),
         "image_id": 0, "height": 20, "width": 28}  # fmt: skip
    DatasetCatalog.register(name, lambda: [d])
    MetadataCatalog.get(name).set(stuff_classes=["a", "b"], ignore_label=255)
    yield name, d, image, label
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(name, pad):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (20,)  # the image's own size: no resize
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    cfg.INPUT.IMAGE_PAD = pad
    return cfg


def test_the_key_says_who_pads_and_with_what():
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.INPUT.SIZE_DIVISIBILITY = 512
    assert image_padding(cfg) == (512, 0)  # ovseg's default: black, in the mapper
    cfg.INPUT.IMAGE_PAD = "gray"
    assert image_padding(cfg) == (512, 128)
    cfg.INPUT.IMAGE_PAD = "normalized_zero"
    assert image_padding(cfg) == (-1, 0)  # the mapper pads nothing
    cfg.INPUT.IMAGE_PAD = "mean"
    with pytest.raises(ValueError, match="IMAGE_PAD 'mean' is not one of"):
        image_padding(cfg)


@pytest.mark.parametrize("pad, value", [("black", 0), ("gray", 128)])
def test_mapper_pads_images_with_the_value_and_labels_with_ignore(dataset, pad, value):
    name, d, image, label = dataset
    out = build_dataset_mapper(_cfg(name, pad), is_train=True)(d)
    assert out["image"].shape == (3, 32, 32) and out["sem_seg"].shape == (32, 32)
    assert torch.all(out["image"][:, 20:, :] == value) and torch.all(
        out["image"][:, :, 28:] == value
    )
    assert torch.all(out["sem_seg"][20:, :] == 255) and torch.all(out["sem_seg"][:, 28:] == 255)
    content = out["image"][:, :20, :28].permute(1, 2, 0).numpy()
    assert np.array_equal(content, image) or np.array_equal(content, image[:, ::-1])
    assert out["content_size"] == (20, 28)  # what self-training may label, whatever the pad


def test_normalized_zero_pads_the_normalised_batch_with_zero(dataset, tmp_path):
    name, d, image, label = dataset
    out = build_dataset_mapper(_cfg(name, "normalized_zero"), is_train=True)(d)
    assert out["image"].shape == (3, 20, 28) and out["sem_seg"].shape == (20, 28)
    # ZegCLIP pads its batch to INPUT.SIZE_DIVISIBILITY (and the patch size) after normalising
    cfg = tiny_zegclip_cfg(tmp_path / "cache")
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    model = build_model(cfg)
    out["vocabulary"] = ["a", "b"]
    images, labels = model.training_batch([out])
    assert images.tensor.shape == (1, 3, 32, 32) and labels.shape == (1, 32, 32)
    mean, std = model.pixel_mean.view(3, 1, 1), model.pixel_std.view(3, 1, 1)
    assert torch.allclose(images.tensor[0, :, :20, :28], (out["image"].float() - mean) / std)
    assert torch.all(images.tensor[0, :, 20:, :] == 0) and torch.all(
        images.tensor[0, :, :, 28:] == 0
    )
    assert torch.all(labels[0, 20:, :] == 255) and torch.all(labels[0, :, 28:] == 255)


def _lsj_cfg(name):
    cfg = _cfg(name, "gray")
    cfg.INPUT.TRAIN_AUGMENTATION = "lsj"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (32, 32)
    cfg.INPUT.LSJ_SCALE_RANGE = [0.5, 2.0]
    return cfg


def test_lsj_flips_rescales_and_crops_then_the_mapper_pads_gray(dataset):
    name, d, image, label = dataset
    cfg = _lsj_cfg(name)
    augs = training_augmentations(cfg, 255)
    assert [type(a).__name__ for a in augs] == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    assert not augs[2].pad  # the mapper pads, so masks pad with False and labels with ignore
    mapper = build_dataset_mapper(cfg, is_train=True)
    sizes = set()
    for seed in range(12):
        np.random.seed(seed)
        out = mapper(dict(d))
        assert out["image"].shape == (3, 32, 32) and out["sem_seg"].shape == (32, 32)
        resize = next(t for t in out["transforms"] if isinstance(t, T.ResizeTransform))
        # the 20x28 image fitted into s x 32, s in [0.5, 2]: the long side 16-64
        assert 16 <= max(resize.new_h, resize.new_w) <= 64
        content = out["sem_seg"] != 255
        h, w = min(resize.new_h, 32), min(resize.new_w, 32)
        assert content[:h, :w].all() and not content[h:].any() and not content[:, w:].any()
        assert torch.all(out["image"][:, h:] == 128) and torch.all(out["image"][:, :, w:] == 128)
        sizes.add((resize.new_h, resize.new_w))
    assert len(sizes) > 6  # a new scale per sample


def test_lsj_refuses_what_it_cannot_do(dataset):
    name = dataset[0]
    cfg = _lsj_cfg(name)
    cfg.INPUT.COLOR_AUG_SSD = True
    with pytest.raises(ValueError, match="no colour jitter"):
        training_augmentations(cfg, 255)
    cfg = _lsj_cfg(name)
    cfg.INPUT.LSJ_SCALE_RANGE = [2.0, 0.5]
    with pytest.raises(ValueError, match="LSJ_SCALE_RANGE"):
        training_augmentations(cfg, 255)
    cfg.INPUT.TRAIN_AUGMENTATION = "jitter"
    with pytest.raises(ValueError, match="TRAIN_AUGMENTATION 'jitter' is not one of"):
        training_augmentations(cfg, 255)
