"""open_clip's attention under grad projects the tokens with one matrix product each way
(ovseg/clip/attention.py): the same outputs and gradients as torch's nn.MultiheadAttention,
without its batched product over the tokens."""

from __future__ import annotations

import copy

import pytest
import torch
from ovseg_testing import TINY_VIT, OpNames, random_clip_model
from torch import nn

from ovseg.clip import CLIPTeacher
from ovseg.clip.attention import TokenMajorMultiheadAttention, token_major_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(model: nn.Module):
    plain = copy.deepcopy(model).double()
    switched = copy.deepcopy(plain)
    return plain, switched, token_major_attention(switched)


def _run(module: nn.Module, x: torch.Tensor, **kwargs):
    x = x.clone().requires_grad_(True)
    with OpNames() as ops:
        out = module(x, **kwargs)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads, ops.names


def test_the_image_towers_blocks_give_torchs_outputs_and_gradients_without_a_batched_product():
    model, _, _ = random_clip_model(TINY_VIT)
    plain, switched, count = _pair(model.visual.transformer)
    assert count == len(model.visual.transformer.resblocks)
    x = torch.randn(3, 17, model.visual.transformer.width, dtype=torch.float64)
    # a trained tower (LSeg's copy): outputs, input and weight gradients
    out, dx, grads, _ = _run(plain, x)
    out2, dx2, grads2, ops = _run(switched, x)
    # dq, dk and dv are stacked into the input projection's layout: no copy of them after
    assert ops.count("stack") == count and ops.count("clone") == 0
    torch.testing.assert_close(out2, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx2, dx, rtol=1e-12, atol=1e-12)
    assert grads2.keys() == grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(grads2[name], grads[name], rtol=1e-10, atol=1e-12)
    # a frozen tower that gradients pass through (ZegCLIP's prompts): torch's projected each
    # block's transposed tokens as a product batched over the tokens, forward and backward
    plain.requires_grad_(False)
    switched.requires_grad_(False)
    out, dx, _, plain_ops = _run(plain, x)
    out2, dx2, _, ops = _run(switched, x)
    torch.testing.assert_close(out2, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx2, dx, rtol=1e-12, atol=1e-12)
    assert plain_ops.count("bmm") >= 2 * count
    assert ops.count("bmm") == 0 and ops.count("clone") == 0


def test_a_frozen_towers_inference_under_autocast_projects_the_tokens_once():
    # CUDA's autocast refuses torch's fused inference path (nn.MultiheadAttention's "autocast
    # is enabled"); the CPU's does not, so torch's switch turns it off here as CUDA's would.
    # Float64 stays float64 under the CPU's bf16 autocast: the sums can be compared exactly.
    model, _, _ = random_clip_model(TINY_VIT)
    plain, switched, count = _pair(model.visual.transformer)
    for tower in (plain, switched):
        tower.requires_grad_(False).eval()
    x = torch.randn(3, 17, model.visual.transformer.width, dtype=torch.float64)
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # no_grad, as detectron2's evaluation (inference mode hides a composite's products)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            with OpNames() as plain_ops:
                ref = plain(x)
            with OpNames() as ops:
                out = switched(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert plain_ops.names.count("bmm") >= count  # the frozen weights' batched products
    assert ops.names.count("bmm") == 0
    # the same without autocast while torch's fused path is off (the roofline counts so)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), OpNames() as ops:
            torch.testing.assert_close(switched(x), ref, rtol=1e-12, atol=1e-12)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    assert "bmm" not in ops.names and ops.names.count("addmm") >= 2 * count
    # without autocast, the fused path on: torch's fused inference path (and its ops)
    with torch.no_grad(), OpNames() as ops:
        torch.testing.assert_close(switched(x), plain(x), rtol=1e-12, atol=1e-12)
    assert "_native_multi_head_attention" in ops.names


def test_the_text_towers_causal_mask_is_kept():
    model, _, _ = random_clip_model(TINY_VIT)
    plain, switched, count = _pair(model.transformer)
    assert count == len(model.transformer.resblocks)
    mask = model.attn_mask.double()
    x = torch.randn(2, mask.shape[0], model.transformer.width, dtype=torch.float64)
    out, dx, _, _ = _run(plain, x, attn_mask=mask)
    out2, dx2, _, _ = _run(switched, x, attn_mask=mask)
    torch.testing.assert_close(out2, out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx2, dx, rtol=1e-12, atol=1e-12)
    # the mask matters: without it the first token would see the others
    free, _, _, _ = _run(switched, x)
    assert not torch.allclose(free[:, 0], out[:, 0])


def test_what_it_does_not_serve_is_torchs_own():
    attn = nn.MultiheadAttention(8, 2, batch_first=True).double()
    mine = copy.deepcopy(attn)
    token_major_attention(mine)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, 8, dtype=torch.float64)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    for args, kwargs in [
        ((x, x, x), {"need_weights": True}),  # the weights are asked for
        ((y, x, x), {}),  # cross-attention
        ((x, x, x), {"key_padding_mask": pad, "need_weights": False}),
    ]:
        ref, ref_w = attn(*args, **kwargs)
        out, w = mine(*args, **kwargs)
        torch.testing.assert_close(out, ref)
        assert (w is None) == (ref_w is None)
    with torch.no_grad():  # torch's fused inference path
        torch.testing.assert_close(mine(x, x, x)[0], attn(x, x, x)[0])


def test_only_plain_batch_first_attention_is_switched_and_the_state_dict_stays():
    model = nn.ModuleDict(
        {
            "first": nn.MultiheadAttention(8, 2, batch_first=True),
            "sequence_first": nn.MultiheadAttention(8, 2),
        }
    )
    keys = list(model.state_dict())
    assert token_major_attention(model) == 1
    assert type(model["first"]) is TokenMajorMultiheadAttention
    assert type(model["sequence_first"]) is nn.MultiheadAttention
    assert list(model.state_dict()) == keys
    assert token_major_attention(model) == 0  # already switched


def test_the_teacher_switches_its_towers():
    model, tokenizer, name = random_clip_model(TINY_VIT)
    teacher = CLIPTeacher(model, tokenizer, name=name)
    kinds = {type(m) for m in teacher.model.modules() if isinstance(m, nn.MultiheadAttention)}
    assert kinds == {TokenMajorMultiheadAttention}
