"""The Hungarian matcher: a hand-computed 2x2 case and brute force on random tiny cases."""

import itertools
import math

import pytest
import torch

from ovseg.modeling.mask_classification import HungarianMatcher
from ovseg.modeling.mask_classification.matcher import batch_sigmoid_focal_cost


def _focal(x, t, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-x))
    if t:
        return alpha * (1 - p) ** gamma * -math.log(p)
    return (1 - alpha) * p**gamma * -math.log(1 - p)


def test_hand_computed_two_by_two():
    # two pixels; target 0 covers pixel 0, target 1 pixel 1; query 0 predicts pixel 1,
    # query 1 pixel 0, both with uniform classes: the assignment must cross
    logits = torch.zeros(1, 2, 3)
    masks = torch.tensor([[[[-3.0, 3.0]], [[3.0, -3.0]]]])  # (B, Q, 1, 2)
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])}
    ]
    matcher = HungarianMatcher(cost_class=1, cost_mask=20, cost_dice=5)
    ((rows, cols),) = matcher({"pred_logits": logits, "pred_masks": masks}, targets)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    # cost of query 0 against target 0, by hand
    s = 1 / (1 + math.exp(3.0))
    focal = (_focal(-3.0, 1) + _focal(3.0, 0)) / 2
    dice = 1 - (2 * s + 1) / ((s + (1 - s)) + 1 + 1)
    cost = matcher.cost_matrix(logits[0], masks[0], targets[0]["labels"], targets[0]["masks"])
    assert cost[0, 0].item() == pytest.approx(-1 / 3 + 20 * focal + 5 * dice, rel=1e-5)


def test_ground_truth_is_downsampled_nearest_to_the_prediction():
    # a 4x4 target of a 2x2 top-left block vs a 2x2 prediction: nearest keeps pixel (0, 0)
    matcher = HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=1)
    gt = torch.zeros(1, 4, 4)
    gt[0, :2, :2] = 1
    pred = torch.full((2, 2, 2), -20.0)
    pred[0, 0, 0] = 20.0  # query 0 predicts exactly the downsampled target
    cost = matcher.cost_matrix(torch.zeros(2, 2), pred, torch.tensor([0]), gt)
    assert cost[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert cost[1, 0].item() > 0.4


def test_matches_brute_force_on_random_cases():
    torch.manual_seed(0)
    matcher = HungarianMatcher()
    for _ in range(5):
        q, m = 4, 3
        logits = torch.randn(1, q, 5)
        masks = torch.randn(1, q, 3, 3)
        tgt = {"labels": torch.randint(0, 4, (m,)), "masks": (torch.rand(m, 6, 6) > 0.5).float()}
        ((rows, cols),) = matcher({"pred_logits": logits, "pred_masks": masks}, [tgt])
        cost = matcher.cost_matrix(logits[0], masks[0], tgt["labels"], tgt["masks"])
        best = min(
            sum(cost[p[j], j].item() for j in range(m)) for p in itertools.permutations(range(q), m)
        )
        assert cost[rows, cols].sum().item() == pytest.approx(best, rel=1e-5)
        assert len(set(rows.tolist())) == m


def test_an_image_without_targets_matches_nothing():
    matcher = HungarianMatcher()
    out = {"pred_logits": torch.zeros(1, 3, 2), "pred_masks": torch.zeros(1, 3, 2, 2)}
    ((rows, cols),) = matcher(
        out, [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 2, 2)}]
    )
    assert rows.numel() == 0 and cols.numel() == 0
    with pytest.raises(ValueError, match="all three costs"):
        HungarianMatcher(0, 0, 0)


def test_focal_cost_weights_positives_by_alpha():
    # p 0.5 on two positive pixels: alpha (1 - p)^2 ln 2 per pixel, the mean over pixels
    # (Mask2Former matcher.py:56; an alpha-symmetric case cannot tell alpha from 1 - alpha)
    cost = batch_sigmoid_focal_cost(torch.zeros(1, 2), torch.ones(1, 2))
    assert cost.item() == pytest.approx(0.25 * 0.25 * math.log(2))
    negatives = batch_sigmoid_focal_cost(torch.zeros(1, 2), torch.zeros(1, 2))
    assert negatives.item() == pytest.approx(0.75 * 0.25 * math.log(2))
