"""Host-to-device copies of training targets: the same Instances as Instances.to, and on
CUDA without a wait per image."""

import pytest
import torch

from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

from ovseg.modeling.host_copy import instances_to_device, tensor_to_device


def _targets(n=3, side=16):
    g = torch.Generator().manual_seed(0)
    inst = Instances((side, side))
    inst.gt_classes = torch.randint(0, 5, (n,), generator=g)
    inst.gt_masks = BitMasks(torch.rand(n, side, side, generator=g) > 0.5)
    inst.gt_boxes = Boxes(torch.rand(n, 4, generator=g) * side)
    inst.gt_is_pseudo = torch.tensor([True] + [False] * (n - 1))
    return inst


def _equal(a: Instances, b: Instances):
    assert a.image_size == b.image_size and a.get_fields().keys() == b.get_fields().keys()
    for name, value in a.get_fields().items():
        other = b.get(name)
        assert type(value) is type(other), name
        if isinstance(value, PolygonMasks):
            assert value.polygons == other.polygons
            continue
        x, y = getattr(value, "tensor", value), getattr(other, "tensor", other)
        assert x.device == y.device and x.dtype == y.dtype and torch.equal(x.cpu(), y.cpu())


def test_instances_move_as_instances_to_does_with_their_field_types():
    inst = _targets()
    inst.gt_polygons = PolygonMasks([[[0.0, 0.0, 4.0, 0.0, 4.0, 4.0]]] * 3)
    _equal(instances_to_device(inst, torch.device("cpu")), inst.to("cpu"))
    x = torch.arange(6)
    assert tensor_to_device(x, torch.device("cpu")) is x  # already there: no copy


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_batch_of_targets_reaches_cuda_without_a_wait():
    from ovseg.benchmark.syncs import count_cuda_syncs

    batch = [_targets() for _ in range(8)]
    _equal(instances_to_device(batch[0], torch.device("cuda")), batch[0].to("cuda"))
    # Instances.to copies from pageable memory: a wait per tensor (32 here)
    syncs = count_cuda_syncs(lambda: [instances_to_device(t, torch.device("cuda")) for t in batch])
    assert syncs["cuda_sync_warnings"] == 0, syncs


def test_a_memo_made_during_inference_mode_still_trains_and_keeps_its_bound():
    from ovseg.modeling.host_copy import device_memo

    cache, calls = {}, []

    def make():
        calls.append(1)
        return torch.tensor([1.0, 2.0])

    with torch.inference_mode():  # an evaluation or a timing memoises first
        first = device_memo(cache, "a", make)
    assert not first.is_inference() and device_memo(cache, "a", make) is first and len(calls) == 1
    weight = torch.ones(2, requires_grad=True)
    (weight * first).sum().backward()  # autograd saves it: an inference tensor is refused
    for key in ("b", "c"):
        device_memo(cache, key, make, limit=2)
    assert list(cache) == ["c"]  # full at 2: emptied before the third entry
