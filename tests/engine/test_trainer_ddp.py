"""The trainer under two gloo processes: what a one-process group cannot show."""

import pytest
import torch
from ovseg_testing import tiny_zegclip, two_region_batch

from ovseg import compat
from ovseg.modeling.mask_classification import HungarianMatcher, MaskClassificationCriterion


def _evaluate_after_diverging_statistics(out_dir):
    from detectron2.config import get_cfg
    from detectron2.utils import comm

    from ovseg.engine import Trainer

    torch.manual_seed(0)  # the same weights on both ranks, as DDP's first broadcast gives
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    ddp = compat.create_ddp_model(model, broadcast_buffers=False)  # as the trainer wraps it
    rank = comm.get_rank()
    ddp(torch.full((2, 3, 4, 4), float(rank)).add_(torch.rand(2, 3, 4, 4)))  # rank's batch
    ddp(torch.rand(2, 3, 4, 4))  # a second step, so num_batches_tracked is 2
    bn = model[1]
    before = bn.running_mean.clone()
    cfg = get_cfg()
    cfg.DATASETS.TEST = ()  # no test set: Trainer.test only prepares the model
    Trainer.test(cfg, ddp)
    state = {"mean": bn.running_mean, "var": bn.running_var, "count": bn.num_batches_tracked}
    torch.save({"before": before, **state}, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_evaluation_scores_every_rank_with_the_saved_batch_norm_statistics(tmp_path):
    # without broadcast_buffers each rank's BatchNorm statistics follow its own batches; the
    # checkpoint holds rank 0's, so rank 1 must evaluate its share of the test set with those
    compat.launch(_evaluate_after_diverging_statistics, 2, args=(str(tmp_path),))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert not torch.allclose(r0["before"], r1["before"])  # the ranks had diverged
    for key in ("mean", "var", "count"):
        assert torch.equal(r0[key], r1[key]), key
    assert torch.equal(r1["mean"], r0["before"]) and int(r1["count"]) == 2


def _accumulated_steps_under_ddp(out_dir):
    from detectron2.utils import comm
    from detectron2.utils.events import EventStorage

    from ovseg.engine.train_loop import OvsegSimpleTrainer

    rank = comm.get_rank()
    g = torch.Generator().manual_seed(rank)  # each rank its own images
    samples = [(torch.randn(3, generator=g), torch.randn(2, generator=g)) for _ in range(8)]

    def loader(batch):
        while True:
            for i in range(0, len(samples), batch):
                yield samples[i : i + batch]

    class Mean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, batch):
            x, y = torch.stack([s[0] for s in batch]), torch.stack([s[1] for s in batch])
            return {"loss": ((self.linear(x) - y) ** 2).sum(dim=1).mean()}

    out = {}
    for batch, steps in ((4, 1), (2, 2)):
        model = Mean()
        ddp = compat.create_ddp_model(model, broadcast_buffers=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = OvsegSimpleTrainer(ddp, loader(batch), optimizer, accumulate_steps=steps)
        with EventStorage(0):
            for _ in range(2):
                trainer.run_step()
        out[steps] = model.linear.weight.detach().clone()
    torch.save(out, f"{out_dir}/acc{rank}.pt")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_accumulated_steps_under_ddp_equal_whole_batches(tmp_path):
    # each rank its own images, the backwards but the last under no_sync: the same weights on
    # both ranks, equal to those of steps of the whole batch
    compat.launch(_accumulated_steps_under_ddp, 2, args=(str(tmp_path),))
    r0, r1 = (torch.load(tmp_path / f"acc{r}.pt") for r in (0, 1))
    torch.testing.assert_close(r0[2], r1[2], rtol=0, atol=0)
    torch.testing.assert_close(r0[2], r0[1])


def _uneven_batch():
    """Two images, the second without its green square: 3 and 2 target masks."""
    batch = two_region_batch()
    batch[1]["sem_seg"][batch[1]["sem_seg"] == 2] = 0
    return batch


def _criterion_inputs():
    """Per image: random queries of 3 classes + no-object on 8x8, and 2 or 1 target masks."""
    g = torch.Generator().manual_seed(0)
    outputs, targets = [], []
    for n in (2, 1):
        logits, pred = torch.randn(1, 4, 4, generator=g), torch.randn(1, 4, 8, 8, generator=g)
        outputs.append({"pred_logits": logits, "pred_masks": pred})
        targets.append(
            {"labels": torch.arange(n), "masks": (torch.rand(n, 8, 8, generator=g) > 0.5).float()}
        )
    return outputs, targets


def _mask_losses_of_a_rank(out_dir, cache):
    from detectron2.utils import comm

    rank = comm.get_rank()
    zegclip = tiny_zegclip(cache).train()(_uneven_batch()[rank : rank + 1])
    outputs, targets = _criterion_inputs()
    criterion = MaskClassificationCriterion(matcher=HungarianMatcher())
    masks = criterion(outputs[rank], targets[rank : rank + 1])
    losses = {**zegclip, **{f"criterion_{k}": v for k, v in masks.items()}}
    torch.save({k: v.detach() for k, v in losses.items()}, f"{out_dir}/loss{rank}.pt")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_mask_losses_are_normalised_by_the_masks_of_every_rank(tmp_path):
    # ZegCLIP's and the set criterion's mask losses divide by the mean number of masks over
    # the processes (Mask2Former criterion.py:200-206): DDP's mean of the ranks' gradients is
    # then the gradient of one process holding both images. Images of 3 and 2 masks: a
    # rank's own count (3, 2) would give another loss than the mean of all (2.5).
    cache = tmp_path / "cache"
    single = tiny_zegclip(cache).train()(_uneven_batch())  # also fills the text cache
    outputs, targets = _criterion_inputs()
    both = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
    masks = MaskClassificationCriterion(matcher=HungarianMatcher())(both, targets)
    single.update({f"criterion_{k}": v for k, v in masks.items()})
    compat.launch(_mask_losses_of_a_rank, 2, args=(str(tmp_path), cache))
    r0, r1 = (torch.load(tmp_path / f"loss{r}.pt") for r in (0, 1))
    checked = [k for k in single if "focal" in k or "dice" in k or k.endswith("_mask")]
    assert len(checked) == 8, sorted(single)  # focal and dice of 3 layers, mask and dice
    for key in checked:
        mean = (r0[key] + r1[key]) / 2
        torch.testing.assert_close(mean, single[key].detach(), rtol=1e-5, atol=1e-7, msg=key)
