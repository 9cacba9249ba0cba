"""MaskCLIP+'s paper pipeline pads each crop as mmseg does (Pad after Normalize): the batch
to INPUT.SIZE_DIVISIBILITY with the pixel mean, the loss over every padded pixel, and the
MaskCLIP teacher labels the padded crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import (
    ADE,
    make_store,
    tiny_maskclip_plus,
    write_unseen_fixture,
    zero_shot_train_mapper,
)
from PIL import Image

from detectron2.utils.events import EventStorage

from ovseg.pseudo import attach_pseudo_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNSEEN = tuple(n for n in ADE.names if n in ADE.unseen)
OPTS = ("MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_PIXELS", "unseen",
        "MODEL.MASKCLIP_PLUS.LOSS_NORMALIZATION", "all")  # fmt: skip


def _samples(tmp_path):
    """Two 40x52 training samples (no augmentation) with a store's labels."""
    dicts = write_unseen_fixture(tmp_path / "data", n=2)
    store = make_store(tmp_path / "store", UNSEEN)
    for d in dicts:
        gt = np.asarray(Image.open(d["sem_seg_file_name"]))
        store.write(d["image_id"], np.zeros(gt.shape, np.int64), np.ones(gt.shape))
    mapper = zero_shot_train_mapper("none", store=store)
    return [mapper(d) for d in attach_pseudo_labels(dicts, store)]


def test_batch_padded_with_the_mean_and_loss_over_every_padded_pixel(tmp_path):
    samples = _samples(tmp_path)
    assert samples[0]["image"].shape[-2:] == (40, 52)
    model = tiny_maskclip_plus(tmp_path / "cache", *OPTS, "INPUT.SIZE_DIVISIBILITY", "64")
    model.eval()  # the BatchNorm statistics of the reference below
    assert model.training_divisibility == 64
    assert model.size_divisibility < 64  # test inputs: the backbone's padding only
    assert model.labeller.size_divisibility % 64 == 0  # the teacher pads each crop to 64
    with EventStorage(0):
        loss = model.losses(samples)["loss_sem_seg"]
    with torch.no_grad():
        images = torch.stack(model.normalize([s["image"] for s in samples]))
        padded = F.pad(images, (0, 12, 0, 24))  # 0 after normalisation: the pixel mean
        logits = model.logits(
            model.pixel_embeddings(padded), model.text_embeddings(ADE.names), (64, 64)
        )
    targets = model.training_targets(samples, logits, iteration=0)
    assert targets.shape == (2, 64, 64) and (targets[:, 40:] == 255).all()
    per_pixel = F.cross_entropy(logits, targets, ignore_index=255, reduction="none")
    assert torch.allclose(loss, per_pixel.sum() / (2 * 64 * 64), rtol=1e-5)
    # without the divisibility the batch is the crops' own size: another mean
    plain = tiny_maskclip_plus(tmp_path / "cache", *OPTS).eval()
    assert plain.training_divisibility == plain.size_divisibility
    with EventStorage(0):
        assert not torch.allclose(plain.losses(samples)["loss_sem_seg"], loss)


@pytest.mark.parametrize("value", [0, 128])  # INPUT.IMAGE_PAD "black", "gray"
def test_the_mappers_padding_is_never_pseudo_labelled(tmp_path, value):
    """The mapper records each sample's size before padding ("content_size"): neither the
    teacher's pseudo-labels nor the distillation reach the padding, whatever its value
    (gray padding was pseudo-labelled as unseen classes when only black was told apart)."""
    names = ["cat", "dog", "grass", "sky", "road"]
    model = tiny_maskclip_plus(
        tmp_path / "cache", unseen=["grass", "road"], pseudo_label_source="online_augmented"
    ).train()
    torch.manual_seed(0)
    image = torch.randint(0, 255, (3, 40, 48), dtype=torch.uint8)
    label = torch.zeros(40, 48, dtype=torch.long)
    label[:, 24:], label[:8, :8] = 1, 255  # seen classes and one free (ignored) corner
    sample = {
        "image": F.pad(image, (0, 16, 0, 24), value=value),
        "sem_seg": F.pad(label, (0, 16, 0, 24), value=255),
        "vocabulary": names,
        "content_size": (40, 48),
    }
    with EventStorage(0):
        target = model.training_targets([sample], torch.zeros(1, 5, 64, 64), iteration=0)[0]
    assert (target[40:] == 255).all() and (target[:, 48:] == 255).all()
    assert (target[:8, :8] != 255).any()  # the free corner inside the image is labelled
    assert model._content(sample, 64, 64).sum() == 40 * 48  # the distillation's pixels
