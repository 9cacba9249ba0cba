"""MODEL.CLIP.FROZEN_DTYPE: the frozen tower's matrix weights cast once to bf16 compute, under
bf16 autocast, what autocast computes from the float32 weights, with fewer casts per step."""

import pytest
import torch
from ovseg_testing.data import random_image, two_region_batch
from ovseg_testing.models import tiny_zegclip, tiny_zegclip_cfg
from torch import nn

from ovseg.clip.frozen_dtype import cast_frozen_tower
from ovseg.engine.speed import apply_speed_options, cast_frozen_towers

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BF16 = torch.bfloat16


def _bf16_step(model, batch):
    """One training forward + backward under CPU bf16 autocast: losses and gradients."""
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=BF16):
        losses = model(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _copies(model, batch) -> int:
    """dtype copies (aten::_to_copy) dispatched in one bf16 training step."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _bf16_step(model, batch)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")


def test_cast_tower_steps_as_autocast_does_with_fewer_copies(tmp_path):
    ref, cast = tiny_zegclip(tmp_path, seed=0), tiny_zegclip(tmp_path, seed=0)
    cfg = tiny_zegclip_cfg(tmp_path)
    cfg.MODEL.CLIP.FROZEN_DTYPE = "bfloat16"
    keys = {k: v.dtype for k, v in ref.state_dict().items()}
    apply_speed_options(cast, cfg)
    tower = cast.backbone.tower
    assert tower is cast.teacher.model.visual and tower.frozen_dtype == BF16
    # matrix weights bf16; norms, embeddings and the trainable prompts stay float32
    assert tower.conv1.weight.dtype == BF16 and tower.proj.dtype == BF16
    block = tower.transformer.resblocks[0]
    assert block.attn.in_proj_weight.dtype == BF16 and block.mlp.c_fc.bias.dtype == BF16
    assert block.ln_1.weight.dtype == torch.float32
    assert tower.positional_embedding.dtype == torch.float32
    assert cast.backbone.prompts.dtype == torch.float32
    # the text tower is not touched; checkpoints neither (the tower is not in them)
    assert cast.teacher.model.token_embedding.weight.dtype == torch.float32
    assert {k: v.dtype for k, v in cast.state_dict().items()} == keys

    batch = two_region_batch(size=32)
    want_losses, want_grads = _bf16_step(ref, batch)
    got_losses, got_grads = _bf16_step(cast, batch)
    assert want_grads and got_grads.keys() == want_grads.keys()
    for k, v in want_losses.items():
        assert torch.isfinite(got_losses[k])
        # the bf16 weights are the ones autocast makes, so the numbers are the same
        torch.testing.assert_close(got_losses[k], v, rtol=0, atol=0)
    for k, v in want_grads.items():
        torch.testing.assert_close(got_grads[k], v, rtol=0, atol=0)
    # an optimizer step moves the prompts; the cast tower stays bf16 and frozen
    before = cast.backbone.prompts.detach().clone()
    torch.optim.SGD([p for p in cast.parameters() if p.requires_grad], lr=0.1).step()
    assert not torch.equal(before, cast.backbone.prompts) and tower.proj.dtype == BF16
    assert _copies(cast, batch) < _copies(ref, batch)


def test_cast_tower_evaluates_outside_autocast(tmp_path):
    ref, cast = tiny_zegclip(tmp_path, seed=0).eval(), tiny_zegclip(tmp_path, seed=0).eval()
    assert cast_frozen_towers(cast, "bfloat16") > 0
    image = {"image": random_image(40, 56), "vocabulary": ["cat", "dog", "sky"]}
    with torch.no_grad():
        (got,) = cast([image])
        (fp32,) = ref([image])
        with torch.autocast("cpu", dtype=BF16):
            (bf16,) = ref([image])
    assert got["sem_seg"].dtype == torch.float32 and got["sem_seg"].shape == (3, 40, 56)
    # evaluation runs the cast tower under bf16 autocast: close to float32, within bf16
    torch.testing.assert_close(got["sem_seg"], fp32["sem_seg"], rtol=0, atol=0.05)
    assert got["sem_seg"].sub(bf16["sem_seg"]).abs().max() < 0.02
    # the teacher's own image forwards too: float32 results close to the uncast teacher's
    images = torch.stack([random_image(32, 32), random_image(32, 32)]).float()
    dense = cast.teacher.dense_embeddings(images)
    assert dense.dtype == torch.float32
    torch.testing.assert_close(dense, ref.teacher.dense_embeddings(images), rtol=0, atol=0.05)
    glob = cast.teacher.encode_image(images)
    torch.testing.assert_close(glob, ref.teacher.encode_image(images), rtol=0, atol=0.05)


def test_frozen_dtype_is_checked(tmp_path):
    model = tiny_zegclip(tmp_path, seed=0)
    with pytest.raises(ValueError, match="FROZEN_DTYPE"):
        cast_frozen_towers(model, "float16")
    assert cast_frozen_towers(model, "") == 0  # as loaded
    assert model.backbone.tower.proj.dtype == torch.float32
    trainable = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="train"):
        cast_frozen_tower(trainable, BF16)
