"""The set criterion: perfect predictions, no-object weighting, auxiliary-loss selection,
Instances targets."""

import math

import pytest
import torch
import torch.nn.functional as F

from detectron2.structures import Instances

from ovseg.modeling.mask_classification import (
    HungarianMatcher,
    MaskClassificationCriterion,
    dice_loss,
    prepare_targets,
    sigmoid_focal_loss,
)


def _criterion(**kw):
    return MaskClassificationCriterion(matcher=HungarianMatcher(), **kw)


def _target():
    masks = torch.zeros(2, 4, 4)
    masks[0, :, :2] = 1
    masks[1, :, 2:] = 1
    return {"labels": torch.tensor([1, 0]), "masks": masks}


def test_perfect_prediction_gives_near_zero_losses():
    tgt = _target()
    logits = torch.full((1, 3, 3), -20.0)
    logits[0, 0, 0] = 20.0  # query 0: class 0 (the second target)
    logits[0, 1, 1] = 20.0  # query 1: class 1 (the first target)
    logits[0, 2, 2] = 20.0  # query 2: no object
    masks = torch.full((1, 3, 4, 4), -30.0)
    masks[0, 0][tgt["masks"][1] > 0] = 30.0
    masks[0, 1][tgt["masks"][0] > 0] = 30.0
    losses = _criterion()({"pred_logits": logits, "pred_masks": masks}, [tgt])
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    for k, v in losses.items():
        assert v.item() < 1e-6, (k, v)
    # a wrong mask is not near zero
    masks[0, 0] = -masks[0, 0]
    bad = _criterion()({"pred_logits": logits, "pred_masks": masks}, [tgt])
    assert bad["loss_mask"].item() > 1.0 and bad["loss_dice"].item() > 0.4


def test_no_object_ce_weight_and_loss_weights():
    # one target, two queries; query 0 matches (it predicts the mask), query 1 is no-object
    tgt = {"labels": torch.tensor([0]), "masks": torch.ones(1, 2, 2)}
    logits = torch.tensor([[[2.0, 0.0, 0.0], [1.0, 0.5, 0.0]]])
    masks = torch.stack([torch.full((2, 2), 5.0), torch.full((2, 2), -5.0)])[None]
    losses = _criterion(no_object_weight=0.1)({"pred_logits": logits, "pred_masks": masks}, [tgt])
    nll = -F.log_softmax(logits[0], -1)
    expected = (1.0 * nll[0, 0] + 0.1 * nll[1, 2]) / (1.0 + 0.1)
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-5)
    focal = sigmoid_focal_loss(masks[0, :1].flatten(1), tgt["masks"].flatten(1), 1.0)
    assert losses["loss_mask"].item() == pytest.approx(20 * focal.item(), rel=1e-5)
    s = 1 / (1 + math.exp(-5.0))
    assert losses["loss_dice"].item() == pytest.approx(
        5 * (1 - (2 * 4 * s + 1) / (4 * s + 4 + 1)), rel=1e-4
    )


def _outputs(num_aux):
    torch.manual_seed(0)
    out = {"pred_logits": torch.randn(1, 3, 3), "pred_masks": torch.randn(1, 3, 2, 2)}
    out["aux_outputs"] = [
        {"pred_logits": torch.randn(1, 3, 3), "pred_masks": torch.randn(1, 3, 2, 2)}
        for _ in range(num_aux)
    ]
    return out


def test_auxiliary_losses_all_first_n_or_none():
    tgt = [_target()]
    assert "loss_dice_3" in _criterion()(_outputs(4), tgt)
    some = _criterion(num_aux_losses=2)(_outputs(4), tgt)
    assert {k for k in some if k.startswith("loss_ce")} == {"loss_ce", "loss_ce_0", "loss_ce_1"}
    none = _criterion(deep_supervision=False)(_outputs(4), tgt)
    assert set(none) == {"loss_ce", "loss_mask", "loss_dice"}


def test_instances_targets_are_padded_to_the_batch():
    a = Instances(
        (4, 4), gt_classes=torch.tensor([1]), gt_masks=torch.ones(1, 4, 4, dtype=torch.bool)
    )
    b = Instances(
        (2, 3), gt_classes=torch.tensor([0]), gt_masks=torch.ones(1, 2, 3, dtype=torch.bool)
    )
    prepared = prepare_targets([a, b])
    assert prepared[1]["masks"].shape == (1, 4, 4)
    assert prepared[1]["masks"].sum().item() == 6
    padded = prepare_targets([a, b], padded_size=(8, 8))
    assert padded[0]["masks"].shape == (1, 8, 8)
    losses = _criterion()(_outputs(0), [a])
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="gt_masks"):
        prepare_targets([Instances((2, 2), gt_classes=torch.tensor([0]))])
    with pytest.raises(ValueError, match="exceed"):
        prepare_targets([a], padded_size=(2, 2))


def test_focal_and_dice_on_hand_computed_values():
    # zero logits: p = 0.5 everywhere, ce = ln 2 and (1 - p_t)^2 = 1/4 at every pixel, so a
    # pixel costs ln 2 / 4 times alpha (0.25) where the target is 1 and 1 - alpha elsewhere
    logits = torch.zeros(2, 4)
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    ln2 = math.log(2.0)
    per_mask = [ln2 / 4 * (2 * 0.25 + 2 * 0.75) / 4, ln2 / 4 * (0.25 + 3 * 0.75) / 4]
    got = sigmoid_focal_loss(logits, targets, num_masks=2.0)
    assert got.item() == pytest.approx(sum(per_mask) / 2, rel=1e-6)
    # dice with +1 smoothing: 1 - (2 * sum(p t) + 1) / (sum p + sum t + 1)
    dice = [1 - (2 * 1.0 + 1) / (2.0 + 2 + 1), 1 - (2 * 0.5 + 1) / (2.0 + 1 + 1)]
    assert dice_loss(logits, targets, num_masks=2.0).item() == pytest.approx(sum(dice) / 2)
    # a confident right answer costs almost nothing, a confident wrong one a lot
    sure = (targets * 2 - 1) * 20
    assert sigmoid_focal_loss(sure, targets, 2.0).item() < 1e-9
    assert sigmoid_focal_loss(-sure, targets, 2.0).item() > 1.0


def test_a_batch_without_any_target_mask_trains_no_object_only():
    # an image whose crop holds no labelled region: nothing is matched; the mask losses are
    # zero but still reach the masks (DDP needs every parameter in the graph), and every
    # query learns "no object"
    logits = torch.zeros(1, 3, 3, requires_grad=True)
    masks = torch.randn(1, 3, 4, 4, requires_grad=True)
    empty = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 4, 4)}
    losses = _criterion()({"pred_logits": logits, "pred_masks": masks}, [empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    assert losses["loss_ce"].item() == pytest.approx(math.log(3))  # uniform over 3 outputs
    sum(losses.values()).backward()
    assert masks.grad is not None and logits.grad[0, :, 2].lt(0).all()  # towards no-object


def _batch_of_outputs(device="cpu", batch=4, queries=12, classes=6, aux=2, seed=0):
    g = torch.Generator().manual_seed(seed)

    def out():
        return {
            "pred_logits": torch.randn(batch, queries, classes, generator=g).to(device),
            "pred_masks": torch.randn(batch, queries, 8, 8, generator=g).to(device),
        }

    outputs = out()
    outputs["aux_outputs"] = [out() for _ in range(aux)]
    counts = [3, 0, 5, 2, 1, 4, 0, 2][:batch]  # images without any mask among them
    targets = [
        {
            "labels": torch.randint(0, classes - 1, (m,), generator=g).to(device),
            "masks": (torch.rand(m, 32, 32, generator=g) > 0.5).float().to(device),
        }
        for m in counts
    ]
    return outputs, targets


def test_batched_matching_and_indexing_equal_the_per_image_losses():
    # the batch's matches are copied and indexed in one go: the same losses as matching and
    # indexing each image on its own (the official per-image loop), an empty image included
    outputs, targets = _batch_of_outputs()
    matcher = HungarianMatcher()
    crit = MaskClassificationCriterion(matcher=matcher, num_aux_losses=-1)
    got = crit(outputs, targets)
    num_masks = float(sum(len(t["labels"]) for t in targets))
    for suffix, out in [("", outputs)] + [
        (f"_{i}", o) for i, o in enumerate(outputs["aux_outputs"])
    ]:
        classes = torch.full(out["pred_logits"].shape[:2], 5, dtype=torch.long)
        src, tgt = [], []
        for b, t in enumerate(targets):
            one = {k: v[b : b + 1] for k, v in out.items() if k != "aux_outputs"}
            ((rows, cols),) = matcher(one, [t])
            classes[b, rows] = t["labels"][cols]
            src.append(out["pred_masks"][b, rows])
            tgt.append(t["masks"][cols])
        weight = torch.ones(6)
        weight[-1] = 0.1
        ce = F.cross_entropy(out["pred_logits"].transpose(1, 2), classes, weight)
        up = F.interpolate(torch.cat(src)[:, None], size=(32, 32), mode="bilinear")[:, 0]
        torch.testing.assert_close(got[f"loss_ce{suffix}"], ce)
        torch.testing.assert_close(
            got[f"loss_mask{suffix}"],
            20 * sigmoid_focal_loss(up.flatten(1), torch.cat(tgt).flatten(1), num_masks),
        )
        torch.testing.assert_close(
            got[f"loss_dice{suffix}"],
            5 * dice_loss(up.flatten(1), torch.cat(tgt).flatten(1), num_masks),
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_criterion_waits_for_the_device_twice_per_prediction_not_per_image():
    from ovseg.benchmark.syncs import count_cuda_syncs

    # 8 images x 3 predictions: matching and indexing image by image waited about 5 times
    # per image and prediction (120 here; FreeSeg's batch of 32 x 10 layers: 1703 per step)
    outputs, targets = _batch_of_outputs("cuda", batch=8, aux=2)
    crit = MaskClassificationCriterion(matcher=HungarianMatcher())
    crit(outputs, targets)  # warm-up: the allocator, the pinned memory
    syncs = count_cuda_syncs(lambda: crit(outputs, targets))
    assert syncs["cuda_sync_warnings"] <= 2 * 3 + 4, syncs
