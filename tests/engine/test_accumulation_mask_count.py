"""SOLVER.ACCUMULATE_STEPS with losses over masks (ZegCLIP, FreeSeg): the accumulated step
divides by the masks of all its forwards, as the data-parallel split it stands in for, whose
official criteria all-reduce the count (ovseg/modeling/mask_count.py). Two images with 3 and 2
masks: a per-forward count gave ZegCLIP's weights a 0.058 difference (of a 0.46 update) from
the whole batch's, and FreeSeg's 1.09 (of 127) from the 2-process run's."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import tiny_freeseg_cfg, tiny_zegclip_cfg, two_region_batch

from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from ovseg.engine.train_loop import OvsegSimpleTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["red thing", "green thing", "sky"]


def _loader(batch, per):
    while True:
        for i in range(0, len(batch), per):
            yield [dict(x) for x in batch[i : i + per]]


def _update(model, batch, per, steps):
    """The weights' change in one SGD step (lr 1) over ``batch``, ``per`` images a forward."""
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1.0)
    trainer = OvsegSimpleTrainer(model, _loader(batch, per), optimizer, accumulate_steps=steps)
    with EventStorage(0):
        trainer.run_step()
    return [p.detach() - q for p, q in zip(params, before)]


def _zegclip(tmp_path):
    torch.manual_seed(0)
    return build_model(tiny_zegclip_cfg(tmp_path / "cache")).train()


def _masks_3_and_2():
    batch = two_region_batch(n=2, size=64)
    batch[1]["sem_seg"][4:12, 20:28] = 1  # image 1 without its green square: 2 classes
    return batch


def test_zegclip_accumulated_step_is_the_whole_batch(tmp_path):
    # every ZegCLIP loss is over masks, normalised by the batch's count (all-reduced under
    # DDP): two forwards of one image are the one forward of two
    whole = _update(_zegclip(tmp_path), _masks_3_and_2(), 2, 1)
    accumulated = _update(_zegclip(tmp_path), _masks_3_and_2(), 1, 2)
    for a, b in zip(whole, accumulated):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def _sample(classes, size=64) -> dict:
    g = torch.Generator().manual_seed(len(classes))
    image = torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8)
    masks = torch.zeros(len(classes), size, size, dtype=torch.bool)
    for i in range(len(classes)):
        masks[i, i * 16 : (i + 1) * 16] = True
    inst = Instances((size, size), gt_classes=torch.tensor(classes), gt_masks=masks)
    return {"image": image, "instances": inst, "vocabulary": NAMES, "task": "panoptic"}


def _freeseg(tmp_path):
    torch.manual_seed(0)
    opts = ["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.MASK_FORMER.DROPOUT", "0.0",
            "MODEL.FREESEG.INTERACTION.DROPOUT", "0.0"]  # fmt: skip
    model = build_model(tiny_freeseg_cfg(tmp_path / "cache", *opts))
    model.thing_classes = frozenset(NAMES[:2])
    return model.train()


def test_freeseg_accumulated_step_is_the_data_parallel_split(tmp_path):
    batch = [_sample([2, 0, 0]), _sample([2, 1])]
    accumulated = _update(_freeseg(tmp_path), batch, 1, 2)
    # what two processes of one image each compute (FreeSeg criterion.py:200-206): the mean
    # of their gradients, each process's CE its own mean, the mask losses divided by the
    # mean count 2.5 (written here as each image's own-count loss x count / 2.5)
    model = _freeseg(tmp_path)
    params = [p for p in model.parameters() if p.requires_grad]
    total = 0.0
    with EventStorage(0):
        for x in batch:
            count = len(x["instances"])
            losses = model([dict(x)])
            total = total + sum(
                v * (1.0 if k.startswith("loss_ce") else count / 2.5) for k, v in losses.items()
            )
    grads = torch.autograd.grad(total / 2, params, allow_unused=True)
    for u, g in zip(accumulated, grads):
        torch.testing.assert_close(
            u, -g if g is not None else torch.zeros_like(u), atol=1e-4, rtol=1e-4
        )


def test_recorded_forwards_divide_by_the_first_forwards_count():
    # a forward of an accumulated ZegCLIP step divides by the step's first count (the same in
    # every process), not by 1: its loss, and an fp16 backward, keep their size (a loss summed
    # over masks is num_masks times larger and overflows the grad scaler sooner)
    from ovseg.modeling.mask_count import MaskCount, step_normalizer

    count = MaskCount()
    count.recorded = []
    assert count.normalizer(torch.tensor(3.0)).item() == 3.0
    assert count.normalizer(torch.tensor(2.0)).item() == 3.0
    assert count.normalizer(torch.tensor(0.0)).item() == 3.0
    assert step_normalizer(count.recorded, 3) / float(count.provisional) == pytest.approx(5 / 9)
    plain = MaskCount()
    assert plain.normalizer(torch.tensor(0.0)).item() == 1.0  # no accumulation: clamped count


def test_the_host_normalizer_reads_what_the_device_normalizer_reads_back():
    # FreeSeg's criterion divides by it without a device tensor and a read-back (two waits for
    # the device per step on CUDA) where no other process or forward is involved
    from ovseg.modeling.mask_count import MaskCount

    count = MaskCount(prefetch=True)
    for masks in (0, 1, 7):
        want = count.normalizer(torch.tensor(float(masks))).item()
        assert count.host_normalizer(masks) == want == max(masks, 1)
    count.fixed = 10 / 3  # an accumulating step's divisor: the float32 the device reads back
    assert count.host_normalizer(4) == count.normalizer(torch.tensor(4.0)).item() != 10 / 3
    count.fixed, count.recorded = None, []  # ZegCLIP's recorded forwards: the device's path
    assert count.host_normalizer(4) is None
