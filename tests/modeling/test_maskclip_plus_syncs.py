"""MaskCLIP+'s training targets without waits for the device: the content mask without
reading its blank runs back, the samples for the teacher found from the host tensors."""

import pytest
import torch
from ovseg_testing.data import write_unseen_fixture, zero_shot_train_mapper
from ovseg_testing.models import tiny_maskclip_plus

from ovseg.benchmark.syncs import HostSyncCounter
from ovseg.modeling.meta_arch.maskclip_plus_targets import content_mask


def _host_read_mask(image, labels, ignore_value=255):
    """The content mask as first written: the blank runs' lengths read back as ints."""
    blank = (image == 0).all(dim=0)
    for label in labels:
        blank = blank & (label == ignore_value)
    h, w = blank.shape
    last_h = h - int(torch.cumprod(blank.all(dim=1).flip(0).int(), 0).sum())
    last_w = w - int(torch.cumprod(blank.all(dim=0).flip(0).int(), 0).sum())
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[:last_h, :last_w] = True
    return mask


def test_content_mask_matches_host_reads_and_reads_nothing_back():
    g = torch.Generator().manual_seed(0)
    for i in range(40):
        h, w = (
            int(torch.randint(1, 12, (1,), generator=g)),
            int(torch.randint(1, 12, (1,), generator=g)),
        )
        image = torch.randint(0, 3, (3, h, w), generator=g, dtype=torch.uint8)
        label = torch.where(torch.rand(h, w, generator=g) < 0.7, 255, 1)
        pad_h, pad_w = (
            int(torch.randint(0, h + 1, (1,), generator=g)),
            int(torch.randint(0, w + 1, (1,), generator=g)),
        )
        image[:, h - pad_h :] = 0
        image[:, :, w - pad_w :] = 0
        label[h - pad_h :] = 255
        label[:, w - pad_w :] = 255
        if i % 5 == 0:
            image.zero_()  # all blank: no content at all
        with HostSyncCounter() as counter:
            mask = content_mask(image, [label, None], 255)
        assert counter.total == 0, counter.counts
        assert mask.dtype == torch.bool and torch.equal(mask, _host_read_mask(image, [label]))


def _needed_on_device(model, samples, h, w):
    """Which samples the teacher labels, as first computed: from the device's targets."""
    names = model.input_vocabulary(samples[0], None)
    _, target = model.labelled_classes(names)
    gt = model._ground_truth(samples, names, target, (len(samples), h, w))
    if model.pseudo_label_pixels == "unseen":
        free = torch.isin(gt, torch.tensor(target))
    else:
        free = gt == model.ignore_value
    free &= torch.stack([model._content(x, h, w) for x in samples])
    return free.flatten(1).any(dim=1).tolist()


@pytest.mark.parametrize(
    "opts, setting",
    [
        ((), "transductive"),
        (("MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_PIXELS", "unseen"), "none"),
        (("MODEL.MASKCLIP_PLUS.ANNOTATION_FREE", "True"), "none"),
    ],
)
def test_samples_for_the_teacher_are_found_on_the_host(tmp_path, opts, setting):
    dicts = write_unseen_fixture(tmp_path / "data", n=3)
    model = tiny_maskclip_plus(tmp_path / "cache", *opts)
    samples = [zero_shot_train_mapper(setting)(d) for d in dicts]
    # one sample without a free pixel, one without image content (all black, all ignored)
    samples[0]["sem_seg"] = torch.where(
        samples[0]["sem_seg"] == 255, 0, samples[0]["sem_seg"]
    ) if setting == "transductive" else torch.zeros_like(samples[0]["sem_seg"])  # fmt: skip
    samples[1]["image"] = torch.zeros_like(samples[1]["image"])
    del samples[1]["content_size"]  # as an input not from the mapper: black reads as padding
    samples[1]["sem_seg"] = torch.full_like(samples[1]["sem_seg"], 255)
    h, w = samples[0]["image"].shape[-2:]
    want = _needed_on_device(model, samples, h + 3, w + 5)
    names = model.input_vocabulary(samples[0], None)
    target = model.labelled_classes(names)[1]
    got = [model._has_free(x, model._host_content(x, h + 3, w + 5), target) for x in samples]
    assert got == want and any(want) and not all(want)
