"""FreeSeg's prompt-learning stage: a short real training run on synthetic images with
ground-truth masks lowers the region classification loss and changes only the prompt
tokens, the checkpoint holds the tokens alone, and bad inputs are refused clearly."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import tiny_freeseg_prompt_cfg

from detectron2.modeling import build_model
from detectron2.structures import Instances

import ovseg  # noqa: F401  (registers the meta-architectures)

NAMES = ["red square", "green bar", "blue corner"]
COLOURS = torch.tensor([[220.0, 30, 30], [30, 200, 40], [30, 40, 210]])


def _sample(seed: int, task: str = "pan_seg") -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.full((3, 48, 48), 128.0) + torch.randn(3, 48, 48, generator=g) * 5
    masks = torch.zeros(3, 48, 48, dtype=torch.bool)
    masks[0, 4:20, 4:20] = True
    masks[1, 30:36, 2:46] = True
    masks[2, 38:, 38:] = True
    for m, c in zip(masks, COLOURS):
        image[:, m] = c.view(3, 1)
    inst = Instances((48, 48))
    inst.gt_masks, inst.gt_classes = masks, torch.tensor([0, 1, 2])
    return {"image": image.clamp(0, 255), "instances": inst, "vocabulary": NAMES, "task": task}


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
    batch = [_sample(0), _sample(1)]
    model.train()
    losses = []
    for _ in range(20):
        loss = model(batch)["loss_prompt_cls"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    for k, v in model.teacher.model.state_dict().items():
        assert torch.equal(v, clip_before[k]), k
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "vocabulary": NAMES}])[0]["sem_seg"]
    assert out.shape == (3, 48, 48)


def test_prompt_stage_refuses_bad_batches(model):
    model.train()
    # mixed tasks are scored each with its own prompt (tests/data/test_region_sampling.py);
    # a batch where only some inputs name a task is ambiguous
    untasked = _sample(1)
    del untasked["task"]
    with pytest.raises(ValueError, match="every input"):
        model([_sample(0, "pan_seg"), untasked])
    bare = _sample(0)
    del bare["instances"]
    with pytest.raises(ValueError, match="no 'instances'"):
        model([bare])
    wrong = _sample(0)
    wrong["instances"].gt_classes = torch.tensor([0, 1, 5])
    with pytest.raises(ValueError, match="outside"):
        model([wrong])
