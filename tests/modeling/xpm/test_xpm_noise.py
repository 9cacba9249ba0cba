"""XPM's noise-aware mask loss: hand-computed values and gradients, reweighting, freezing."""

import math

import pytest
import torch
from torch import nn

from ovseg.modeling.xpm import (
    MaskNoiseHead,
    freeze_noise_head_at,
    noise_aware_mask_loss,
    pseudo_loss_weight,
    reweight_pseudo_losses,
)


def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


def _bce(z, y):
    return -(y * math.log(_sigmoid(z)) + (1 - y) * math.log(1 - _sigmoid(z)))


def test_loss_and_gradient_to_s_match_a_hand_computation():
    m = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]], dtype=torch.float64)
    s = torch.tensor([[[0.2, -0.4], [1.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    eps = torch.tensor([[[1.5, -0.5], [0.3, -2.0]]], dtype=torch.float64)
    loss = noise_aware_mask_loss(m, torch.exp(s / 2), y, eps)
    loss.backward()
    ms, ss = m.flatten().tolist(), s.detach().flatten().tolist()
    ys, es = y.flatten().tolist(), eps.flatten().tolist()
    zs = [mi + math.exp(si / 2) * ei for mi, si, ei in zip(ms, ss, es)]
    assert loss.item() == pytest.approx(sum(_bce(z, yi) for z, yi in zip(zs, ys)) / 4)
    # dL/ds = (sigmoid(z) - y) / N * eps * sigma / 2
    hand = [
        (_sigmoid(z) - yi) / 4 * ei * math.exp(si / 2) / 2 for z, yi, si, ei in zip(zs, ys, ss, es)
    ]
    assert s.grad.flatten().tolist() == pytest.approx(hand)
    # with no noise the loss is plain BCE on m
    plain = noise_aware_mask_loss(m, torch.exp(s / 2), y, torch.zeros_like(m))
    assert plain.item() == pytest.approx(sum(_bce(mi, yi) for mi, yi in zip(ms, ys)) / 4)


def test_noise_is_drawn_per_pixel_when_not_given():
    torch.manual_seed(0)
    m = torch.zeros(2, 8, 8)
    sigma = torch.full((2, 1, 8, 8), 3.0)
    y = torch.ones(2, 8, 8)
    a, b = noise_aware_mask_loss(m, sigma, y), noise_aware_mask_loss(m, sigma, y)
    assert a.item() != b.item()
    assert a.item() > math.log(2)  # noise on a zero logit raises the mean BCE (Jensen)


def test_head_init_and_detach():
    torch.manual_seed(0)
    head = MaskNoiseHead(16)
    assert head.conv.bias.item() == 1.0
    assert head.conv.weight.std().item() == pytest.approx(1e-3, rel=0.5)
    deconv = nn.ConvTranspose2d(4, 16, 2, 2)
    features = torch.relu(deconv(torch.randn(3, 4, 7, 7)))
    sigma = head(features)
    assert sigma.shape == (3, 1, 14, 14)
    assert torch.allclose(sigma, torch.full_like(sigma, math.exp(0.5)), atol=1e-2)
    y, eps = torch.ones(3, 14, 14), torch.randn(3, 14, 14)
    # the noise head's path alone trains the head but never reaches the deconv
    noise_aware_mask_loss(features[:, 0].detach(), sigma, y, eps).backward()
    assert deconv.weight.grad is None
    assert head.conv.weight.grad is not None and head.conv.weight.grad.abs().sum() > 0
    # the deconv is trained through the mask logits m
    noise_aware_mask_loss(features[:, 0], head(features), y, eps).backward()
    assert deconv.weight.grad is not None


def test_reweighting_is_0_01_over_mean_sigma_and_detached():
    sigma = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    w = pseudo_loss_weight(sigma)
    assert w.item() == pytest.approx(0.01 / 2.5) and not w.requires_grad
    losses = {
        "loss_mask": torch.tensor(2.0),
        "loss_cls": torch.tensor(3.0),
        "loss_box_reg": torch.tensor(5.0),
    }
    out = reweight_pseudo_losses(losses, sigma)
    assert out["loss_mask"].item() == 2.0
    assert out["loss_cls"].item() == pytest.approx(3.0 * 0.004)
    assert out["loss_box_reg"].item() == pytest.approx(5.0 * 0.004)
    with pytest.raises(ValueError, match="empty"):
        pseudo_loss_weight(torch.zeros(0))


def test_head_freezes_at_its_iteration_and_stays_frozen_on_reload():
    head = MaskNoiseHead(4)
    features = torch.rand(2, 4, 6, 6)
    for it in range(5):
        assert freeze_noise_head_at(head, it, 3) == (it >= 3)
    assert not head.conv.weight.requires_grad and not head.conv.bias.requires_grad
    before = head.conv.weight.clone()
    sigma = head(features)
    assert not sigma.requires_grad  # nothing left to train through it
    m = torch.zeros(2, 6, 6, requires_grad=True)
    noise_aware_mask_loss(m, sigma, torch.ones(2, 6, 6), torch.randn(2, 6, 6)).backward()
    assert head.conv.weight.grad is None and torch.equal(head.conv.weight, before)
    assert m.grad is not None  # the mask logits still train under the frozen noise
    fresh = MaskNoiseHead(4)
    fresh.load_state_dict(head.state_dict())
    assert bool(fresh.frozen) and not fresh(features).requires_grad
    assert not freeze_noise_head_at(MaskNoiseHead(4), 10**6, -1)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="share the shape"):
        noise_aware_mask_loss(torch.zeros(2, 4, 4), torch.ones(2, 4, 4), torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="one channel"):
        noise_aware_mask_loss(torch.zeros(2, 4, 4), torch.ones(2, 3, 4, 4), torch.zeros(2, 4, 4))
    empty = torch.zeros(0, 4, 4, requires_grad=True)
    assert noise_aware_mask_loss(empty, torch.ones(0, 4, 4), torch.zeros(0, 4, 4)).item() == 0
