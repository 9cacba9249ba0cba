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
