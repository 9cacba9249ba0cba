"""FreeSeg's prompt-learning stage: a short real training run on synthetic region crops (the
ovseg_region mapper's output: a crop, one mask, its class) lowers the region classification
loss and changes only the prompt tokens, the checkpoint holds the tokens alone, eval
classifies regions (and segments plain images), the fill follows its switch, CLIP's tower
sees a crop at its own size (MODEL.FREESEG.PROMPT_NATIVE_SIZE, the release) or resized, and
bad inputs are refused clearly."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import fit_steps, tiny_freeseg_prompt_cfg

from detectron2.modeling import build_model
from detectron2.structures import Instances

import ovseg  # noqa: F401  (registers the meta-architectures)

NAMES = ["red square", "green bar", "blue corner"]
COLOURS = torch.tensor([[220.0, 30, 30], [30, 200, 40], [30, 40, 210]])


def _sample(seed: int, cls: int, task: str = "pan_seg", h: int = 32, w: int = 32) -> dict:
    """An h x w crop whose mask (a random 20x20 box) holds class ``cls``'s colour; outside:
    noise."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=g) * 255
    if h == w:
        y, x = torch.randint(0, h - 20, (2,), generator=g).tolist()
    else:
        y, x = (int(torch.randint(0, s - 20, (1,), generator=g)) for s in (h, w))
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y : y + 20, x : x + 20] = True
    image[:, mask] = COLOURS[cls].view(3, 1)
    inst = Instances((h, w))
    inst.gt_masks, inst.gt_classes = mask[None], torch.tensor([cls])
    return {"image": image, "instances": inst, "vocabulary": NAMES, "task": task}


@pytest.fixture
def model(tmp_path):
    torch.manual_seed(0)
    return build_model(tiny_freeseg_prompt_cfg(tmp_path / "cache"))


def test_prompt_stage_learns_only_the_prompt_tokens(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.class_context", "prompt.task_context"}
    assert set(model.state_dict()) == trainable  # the teacher never enters a checkpoint
    clip_before = {k: v.clone() for k, v in model.teacher.model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    batch = [_sample(i, i % 3) for i in range(6)]
    model.train()
    losses = fit_steps(model, batch, opt, 20, key="loss_prompt_cls")
    assert losses[-1] < 0.7 * losses[0], losses
    for k, v in model.teacher.model.state_dict().items():
        assert torch.equal(v, clip_before[k]), k
    model.eval()
    with torch.no_grad():
        out = model(batch[:2])
        dense = model([{"image": batch[0]["image"], "vocabulary": NAMES}])[0]["sem_seg"]
    assert [o["classification"].shape for o in out] == [(1, 3), (1, 3)]
    # eval logits are the training logits of the same region (its task's prompts)
    with torch.no_grad():
        image = model.region_embeddings(batch[:1])
        want = model.temperature * image @ model.prompt(NAMES, "panoptic segmentation.").t()
    torch.testing.assert_close(out[0]["classification"], want)
    assert dense.shape == (3, 32, 32)  # a plain image (demo) is segmented densely


def test_outside_the_mask_is_filled_by_its_rule(model):
    x = _sample(0, 1)
    mean = model.teacher.pixel_mean.flatten()
    seen = {}
    model.embed_crops = lambda crops: seen.setdefault("crops", crops)[:, 0, 0, :2]
    model.region_embeddings([x])
    crop, mask = seen["crops"][0], x["instances"].gt_masks[0]
    assert torch.equal(crop[:, mask], x["image"][:, mask])
    torch.testing.assert_close(crop[:, ~mask], mean.view(3, 1).expand(3, int((~mask).sum())))
    model.normalized_mean_fill = True  # official: the mean in normalised space
    seen.clear()
    model.region_embeddings([x])
    normalised = (seen["crops"][0][:, ~mask] - mean.view(3, 1)) / model.teacher.pixel_std.view(3, 1)
    torch.testing.assert_close(normalised, (mean / 255).view(3, 1).expand_as(normalised))


@pytest.mark.parametrize("native", [True, False])
def test_the_tower_sees_the_crop_at_its_switched_size(tmp_path, native):
    torch.manual_seed(0)
    opts = [] if native else ["MODEL.FREESEG.PROMPT_NATIVE_SIZE", "False"]
    model = build_model(tiny_freeseg_prompt_cfg(tmp_path / "cache", *opts))
    assert model.native_size is native  # the key's default: the release's native size
    grids = []
    model.teacher.model.visual.conv1.register_forward_hook(
        lambda module, args, out: grids.append(tuple(out.shape))
    )
    batch = [_sample(i, i % 3, "sem_seg", h=84, w=64) for i in range(3)]
    model.train()
    loss = model(batch)["loss_prompt_cls"]
    loss.backward()
    assert torch.isfinite(loss) and model.prompt.class_context.grad.abs().sum() > 0
    # native: the 84x64 crop's own floor(84 / 16) x 64 / 16 patches (the release's 244x224
    # crop: 15x14), the tiny ViT's 4x4 table interpolated; else resized to its 64x64: 4x4
    assert grids == ([(3, 64, 5, 4)] if native else [(3, 64, 4, 4)])
    if not native:  # switched off: the teacher's resized embedding, as before the switch
        mean = model.teacher.pixel_mean.flatten().view(3, 1, 1)
        crops = [torch.where(x["instances"].gt_masks[0], x["image"], mean) for x in batch]
        want = model.teacher.encode_image(torch.stack(crops))
        assert torch.equal(model.region_embeddings(batch), want)


def test_prompt_stage_refuses_bad_batches(model):
    model.train()
    # mixed tasks are scored each with its own prompt (tests/data/test_region_sampling.py);
    # a batch where only some inputs name a task is ambiguous
    untasked = _sample(1, 1)
    del untasked["task"]
    with pytest.raises(ValueError, match="every input"):
        model([_sample(0, 0, "pan_seg"), untasked])
    bare = _sample(0, 0)
    del bare["instances"]
    with pytest.raises(ValueError, match="no 'instances'"):
        model([bare])
    wrong = _sample(0, 0)
    wrong["instances"].gt_classes = torch.tensor([5])
    with pytest.raises(ValueError, match="outside"):
        model([wrong])
    whole = _sample(0, 0)  # a whole image with all its masks is no region input
    inst = Instances((32, 32))
    inst.gt_masks = whole["instances"].gt_masks.repeat(2, 1, 1)
    inst.gt_classes = torch.tensor([0, 1])
    whole["instances"] = inst
    with pytest.raises(ValueError, match="ovseg_region"):
        model([whole])
    model.eval()
    with pytest.raises(ValueError, match="mixes"):
        model([_sample(0, 0), {"image": bare["image"], "vocabulary": NAMES}])
