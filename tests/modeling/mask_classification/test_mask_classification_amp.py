"""FreeSeg's mask-classification losses, matcher and pixel decoder under bf16 autocast (the
CPU's SOLVER.AMP.DTYPE bf16; the same code runs under CUDA autocast): float32 losses and
costs, as the code's own .float() casts intend."""

import pytest
import torch
from ovseg_testing.models import tiny_freeseg_cfg

from detectron2.modeling import build_model

from ovseg.modeling.mask_classification.criterion import MaskClassificationCriterion
from ovseg.modeling.mask_classification.matcher import HungarianMatcher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _masks_and_targets(side: int, n: int = 4):
    g = torch.Generator().manual_seed(0)
    tgt = torch.zeros(n, side, side)
    tgt[:, : side // 2] = 1
    # quarter-resolution mask logits, as the decoder's einsum gives them, near-converged
    low = (tgt[:, ::4, ::4] * 2 - 1) * 6 + torch.randn(n, side // 4, side // 4, generator=g)
    targets = [{"labels": torch.zeros(n, dtype=torch.long), "masks": tgt}]
    return low.bfloat16().float(), targets, [(torch.arange(n), torch.arange(n))]


def test_mask_losses_under_bf16_autocast_are_float32_and_match_fp32():
    # the decoder's masks come out of autocast in bf16; the losses must still be computed
    # (upsampling, sigmoid, dice sums) in float32, as ovseg.losses.mask_losses does for ZegCLIP
    low, targets, indices = _masks_and_targets(256)
    crit = MaskClassificationCriterion(matcher=None)
    matched = crit.matched_on(torch.device("cpu"), targets, indices)
    gt = targets[0]["masks"]
    ref_in = low.clone().requires_grad_()
    ref = crit.loss_masks(ref_in[None], gt, matched, 4.0)
    (ref["loss_mask"] + ref["loss_dice"]).backward()
    amp_in = low.clone().bfloat16().requires_grad_()
    with _bf16():
        got = crit.loss_masks(amp_in[None], gt, matched, 4.0)
        (got["loss_mask"] + got["loss_dice"]).backward()
    for k in ("loss_mask", "loss_dice"):
        assert got[k].dtype == torch.float32, f"{k} is {got[k].dtype}"
        torch.testing.assert_close(got[k], ref[k], rtol=1e-3, atol=1e-6)
    # the gradient reaching the (bf16) decoder output: bf16 rounding of the gradient only
    err = (amp_in.grad.float() - ref_in.grad).norm() / ref_in.grad.norm()
    assert err < 0.01, f"gradient relative error {err:.2%}"


def test_matching_costs_are_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g)
    masks = torch.randn(8, 16, 16, generator=g) * 2
    labels = torch.tensor([0, 2, 3])
    gt = (torch.rand(3, 64, 64, generator=g) > 0.5).float()
    matcher = HungarianMatcher()
    ref = matcher.cost_matrix(logits, masks, labels, gt)
    with _bf16():
        got = matcher.cost_matrix(logits.bfloat16(), masks.bfloat16(), labels, gt)
    want = matcher.cost_matrix(logits.bfloat16().float(), masks.bfloat16().float(), labels, gt)
    assert got.dtype == torch.float32
    # the same numbers as float32 costs of the same (bf16) predictions
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert ref.shape == got.shape


def test_pixel_decoder_runs_in_float32_under_cpu_autocast(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_freeseg_cfg(tmp_path)).eval()
    x = torch.randn(1, 3, 64, 64) * 50
    with torch.no_grad():
        feats = model.backbone(x)
        ref = model.pixel_decoder.forward_features(feats)
        with _bf16():
            got = model.pixel_decoder.forward_features(feats)
    assert got[0].dtype == got[1].dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in got[2])
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)


def test_semantic_scores_and_query_probs_are_float32_under_bf16_autocast():
    # inference under autocast (e.g. the benchmark's bf16 runs): the softmax over the classes
    # and the sum over queries run in float32 on the decoder's bf16 outputs
    from ovseg.modeling.freeseg import query_probs
    from ovseg.modeling.mask_classification import semantic_inference

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(20, 6, generator=g) * 8).bfloat16()
    masks = (torch.randn(20, 16, 16, generator=g) * 4).bfloat16()
    ref_probs = query_probs(logits.float())
    ref = semantic_inference(ref_probs, masks.float(), has_no_object=False)
    with _bf16():
        probs = query_probs(logits)
        got = semantic_inference(probs, masks, has_no_object=False)
    assert probs.dtype == got.dtype == torch.float32
    torch.testing.assert_close(probs, ref_probs)
    torch.testing.assert_close(got, ref)
