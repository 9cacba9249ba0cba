"""MaskCLIP+'s content mask: the same pixels as read back on the host, without reading back."""

import torch

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
