"""The trainer under two gloo processes: what a one-process group cannot show."""

import pytest
import torch

from ovseg import compat


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
