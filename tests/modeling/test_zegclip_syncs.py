"""The semantic students' training steps build nothing from host data and find nothing by
nonzero (on CUDA each is a wait for the device): ZegCLIP's unseen classes' pixels before
self-training and learnable background's rows, the vocabulary groups' sample indices."""

import traceback

import pytest
import torch
from ovseg_testing.data import two_region_batch
from ovseg_testing.models import tiny_lseg, tiny_zegclip

from detectron2.utils.events import EventStorage

from ovseg.benchmark.syncs import HostSyncCounter
from ovseg.modeling.host_copy import batch_index

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_unseen_pixels_before_self_training_are_looked_up_not_found_by_nonzero(tmp_path):
    from test_zegclip import _split_model  # the 4-class split with "cow" and "sheep" unseen

    model = _split_model(tmp_path, "none", self_training_pixels="unseen",
                         self_training_start_iter=5)  # fmt: skip
    names = ("cat", "cow", "grass", "sheep")
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 6, 7), generator=g)
    target[0, :2] = 255
    logits = torch.zeros(2, 4, 6, 7)
    with EventStorage(start_iter=0):
        model._targets(target, logits, names)  # the flags memoised
        with HostSyncCounter() as counter:
            out, classes = model._targets(target, logits, names)
    assert counter.total == 0, counter.counts
    unseen = torch.tensor([1, 3])
    assert torch.equal(out, target.masked_fill(torch.isin(target, unseen), 255))
    assert classes.tolist() == [True, False, True, False]


class _FreshTensors(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts tensors built from host data (``torch.tensor(...)``: ``lift_fresh``), each a
    copy from pageable memory, which waits for the device, when the target is CUDA."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.ovseg_sites = []  # where ovseg's own code built one (not detectron2's, below it)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "lift_fresh":
            self.count += 1
            frames = [
                f
                for f in traceback.extract_stack()
                if "/ovseg/" in f.filename or "/detectron2/" in f.filename
            ]
            if frames and "/ovseg/" in frames[-1].filename:
                self.ovseg_sites.append(f"{frames[-1].filename}:{frames[-1].lineno}")
        return func(*args, **(kwargs or {}))


def test_the_learnable_background_rows_are_built_once(tmp_path):
    model = tiny_zegclip(tmp_path, background_class="grass", bg_embed=True)
    names = ("cat", "dog", "grass")
    first = model.text_embeddings(names)
    with _FreshTensors() as fresh:
        again = model.text_embeddings(names)
    assert fresh.count == 0 and torch.equal(first, again)
    # the background's row is the learnable embedding's direction
    cosine = torch.cosine_similarity(again[2], model.classifier.bg_embed.embedding[0], dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("build", [tiny_zegclip, tiny_lseg], ids=["zegclip", "lseg"])
def test_a_training_step_builds_no_index_from_host_data(tmp_path, build):
    # tensor[list] of a vocabulary group built its index on the host: a copy and a wait per
    # use on CUDA (LSeg 2 per step, ZegCLIP 3); detectron2's ImageList sizes stay on the host
    model = build(tmp_path).train()
    batch = two_region_batch(names=("cat", "dog", "grass"))
    with EventStorage(start_iter=0):
        model(batch)
        with _FreshTensors() as fresh:
            model(batch)
    assert fresh.ovseg_sites == []


def test_batch_index_is_a_view_for_the_whole_batch_and_indices_otherwise():
    x = torch.arange(12).reshape(4, 3)
    assert batch_index([0, 1, 2, 3], 4, torch.device("cpu")) == slice(None)
    index = batch_index([1, 3], 4, torch.device("cpu"))
    assert index.dtype == torch.long and torch.equal(x[index], x[[1, 3]])
