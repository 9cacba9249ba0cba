"""INPUT.IMAGE_PAD: the value crops are padded with, by the mapper or (mmseg) by the model."""

import uuid

import numpy as np
import pytest
import torch
from ovseg_testing.models import tiny_zegclip_cfg
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from ovseg import add_ovseg_config
from ovseg.data.dataset_mappers import build_dataset_mapper
from ovseg.data.dataset_mappers.padding import image_padding

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
