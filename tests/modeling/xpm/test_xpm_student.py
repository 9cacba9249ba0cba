"""XPM's robust student (ovseg/modeling/meta_arch/xpm_student.py): started from a teacher
checkpoint, backbone and RPN frozen, pseudo RoIs through the noise-aware mask loss and the
0.01 / mean(sigma) reweighting, the noise head frozen at its iteration, batches built by
hand as the pseudo-instance mapper gives them."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import tiny_xpm_cfg, xpm_batch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ovseg.data.captions.lvis import lvis_vocabulary

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xpm_student_clip_cache")


def _student(cache, *opts, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_xpm_cfg(cache, "XPMStudent", *opts))
    model.seen_names = ("cat", "bird")  # "dog" is unseen: only pseudo-labels name it
    return model.train()


def _proposals_around_targets(model):
    """Make the frozen (random) RPN propose each image's instance boxes, a little moved,
    so that pseudo RoIs exist (an untrained RPN proposes nothing near them)."""

    def proposals(images, features, gt):
        out = []
        for size in images.image_sizes:
            boxes = torch.tensor([[6, 8, 34, 30], [30, 36, 60, 58], [29, 35, 59, 57.0]])
            out.append(
                Instances(size, proposal_boxes=Boxes(boxes), objectness_logits=torch.zeros(3))
            )
        return out

    model._proposals = proposals


def _spy_heads(model):
    """Record every call of the RoI heads' losses: (kwargs, returned losses, sigma)."""
    calls = []
    original = model.roi_heads.losses

    def spy(*args, **kwargs):
        losses, sigma = original(*args, **kwargs)
        calls.append((kwargs, {k: v.detach().clone() for k, v in losses.items()}, sigma))
        return losses, sigma

    model.roi_heads.losses = spy
    return calls


def _step(model, batch, iteration: int = 0, lr: float = 0.1):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    with EventStorage(iteration):
        losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    return losses


def test_backbone_and_rpn_are_frozen(cache):
    model = _student(cache)
    assert not model.backbone.training and not model.proposal_generator.training
    frozen = {
        name: p.detach().clone()
        for name, p in [
            *model.backbone.named_parameters(),
            *model.proposal_generator.named_parameters(),
        ]
    }
    stats = [b.clone() for b in model.backbone.buffers()]
    heads = [p.detach().clone() for p in model.roi_heads.parameters()]
    _step(model, xpm_batch())
    for name, p in [
        *model.backbone.named_parameters(),
        *model.proposal_generator.named_parameters(),
    ]:
        assert not p.requires_grad and p.grad is None, name
        assert torch.equal(p, frozen[name]), name
    assert all(torch.equal(a, b) for a, b in zip(stats, model.backbone.buffers()))  # BN in eval
    assert any(not torch.equal(a, p) for a, p in zip(heads, model.roi_heads.parameters()))


def test_starts_from_the_teacher_checkpoint(cache, tmp_path):
    torch.manual_seed(1)
    teacher = build_model(tiny_xpm_cfg(cache, "XPMTeacher"))
    path = tmp_path / "model_final.pth"
    torch.save({"model": teacher.state_dict(), "iteration": 9}, path)
    student = _student(cache, "MODEL.XPM.TEACHER_WEIGHTS", str(path))
    want = teacher.state_dict()
    for key, value in student.state_dict().items():
        if key in want:
            assert torch.equal(value, want[key]), key
    noise = student.roi_heads.mask_head.noise.conv
    assert float(noise.bias) == 1.0 and float(noise.weight.std()) < 0.01  # its own init
    extra = tmp_path / "extra.pth"
    torch.save({**want, "roi_heads.box_predictor.cls_score": torch.zeros(3)}, extra)
    with pytest.raises(ValueError, match=r"unexpected \['roi_heads.box_predictor.cls_score'\]"):
        _student(cache, "MODEL.XPM.TEACHER_WEIGHTS", str(extra))
    bad = tmp_path / "other.pth"
    torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="not a checkpoint of this XPM teacher"):
        _student(cache, "MODEL.XPM.TEACHER_WEIGHTS", str(bad))
    with pytest.raises(FileNotFoundError, match="train the XPM teacher first"):
        _student(cache, "MODEL.XPM.TEACHER_WEIGHTS", str(tmp_path / "missing.pth"))


def test_pseudo_rois_get_the_noise_loss_and_the_reweighting(cache):
    model = _student(cache)
    _proposals_around_targets(model)
    calls = _spy_heads(model)
    with EventStorage(0):
        losses = model(xpm_batch())
    assert set(losses) == {
        "loss_cls", "loss_box_reg", "loss_mask", "loss_cls_pseudo", "loss_mask_pseudo"
    }  # fmt: skip
    (gt_kwargs, _, gt_sigma), (ps_kwargs, raw, sigma) = calls
    assert not gt_kwargs.get("noisy_masks", False) and gt_sigma is None
    assert ps_kwargs["noisy_masks"] and not ps_kwargs["append_gt"] and not ps_kwargs["box_reg"]
    assert sigma is not None and sigma.numel() > 0  # pseudo RoIs were there
    weight = 0.01 / sigma.detach().mean()
    torch.testing.assert_close(losses["loss_cls_pseudo"], raw["loss_cls"] * weight)
    torch.testing.assert_close(losses["loss_mask_pseudo"], raw["loss_mask"])  # weight 1
    torch.testing.assert_close(model.last_mean_sigma, sigma.detach().mean())
    # only the noise-aware loss reaches the noise head (its input is detached)
    noise = model.roi_heads.mask_head.noise.conv
    losses["loss_mask_pseudo"].backward(retain_graph=True)
    assert noise.weight.grad is not None and float(noise.weight.grad.abs().sum()) > 0
    noise.weight.grad = None
    (losses["loss_mask"] + losses["loss_cls_pseudo"]).backward()
    assert noise.weight.grad is None or float(noise.weight.grad.abs().sum()) == 0.0


def test_pseudo_box_regression_is_a_switch(cache):
    model = _student(cache, "MODEL.XPM.PSEUDO_BOX_REG", "True")
    _proposals_around_targets(model)
    calls = _spy_heads(model)
    with EventStorage(0):
        losses = model(xpm_batch())
    _, raw, sigma = calls[1]
    weight = 0.01 / sigma.detach().mean()
    assert float(raw["loss_box_reg"]) > 0
    torch.testing.assert_close(losses["loss_box_reg_pseudo"], raw["loss_box_reg"] * weight)


def test_batches_without_pseudo_flags_are_ground_truth(cache):
    model = _student(cache)
    model.seen_names = None  # "dog" is ground truth here, so it must be trainable
    _proposals_around_targets(model)
    calls = _spy_heads(model)
    with EventStorage(0):
        losses = model(xpm_batch(flag=False))
    assert len(calls) == 1  # no pseudo pass
    assert float(losses["loss_cls_pseudo"]) == 0.0 and float(losses["loss_mask_pseudo"]) == 0.0
    assert losses["loss_cls_pseudo"].requires_grad  # zero, still in the graph for DDP
    sampled = calls[0][1]
    assert float(sampled["loss_mask"]) > 0


def test_ground_truth_of_an_unseen_class_is_refused(cache):
    model = _student(cache)
    with pytest.raises(ValueError, match=r"ground truth of classes \['dog'\]"):
        with EventStorage(0):
            model(xpm_batch(flag=False))


def test_noise_head_is_frozen_from_its_iteration(cache):
    model = _student(cache, "MODEL.XPM.NOISE_FREEZE_ITER", "3")
    _proposals_around_targets(model)
    noise = model.roi_heads.mask_head.noise
    before = noise.conv.weight.detach().clone()
    _step(model, xpm_batch(), iteration=2)
    assert not bool(noise.frozen) and not torch.equal(before, noise.conv.weight)
    trained = noise.conv.weight.detach().clone()
    _step(model, xpm_batch(), iteration=3)
    assert bool(noise.frozen) and not noise.conv.weight.requires_grad
    assert torch.equal(trained, noise.conv.weight)
    assert bool(model.state_dict()["roi_heads.mask_head.noise.frozen"])  # resumes frozen


def test_student_trains_under_ddp_when_a_step_leaves_parameters_without_gradient(cache, tmp_path):
    # a one-process gloo group checks DDP's reduction as eight GPUs would: without
    # find_unused_parameters the step after one whose batch had no pseudo instance (and the
    # step after the noise head froze) raises "Expected to have finished reduction"
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ovseg import compat
    from ovseg.engine.trainer import ddp_options

    model = _student(cache, "MODEL.XPM.NOISE_FREEZE_ITER", "2")
    _proposals_around_targets(model)
    assert ddp_options(model) == {"find_unused_parameters": True}
    assert ddp_options(torch.nn.Linear(1, 1)) == {"find_unused_parameters": False}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    ddp = None
    try:
        ddp = DistributedDataParallel(model, broadcast_buffers=False, **ddp_options(model))
        noise = model.roi_heads.mask_head.noise
        before = noise.conv.weight.detach().clone()
        batches = [xpm_batch(), xpm_batch(pseudo=False), xpm_batch(), xpm_batch()]
        for iteration, batch in enumerate(batches):
            _step(ddp, batch, iteration=iteration)
        assert bool(noise.frozen) and not torch.equal(before, noise.conv.weight)
    finally:
        ddp = None  # the group ends with the wrapper, not at this process's exit
        compat.end_process_group()


def _lvis_batch(category: str):
    """xpm_batch with the pseudo instance of an LVIS class, as the mapper gives it with
    MODEL.XPM.CAPTION_VOCABULARY "lvis" ("pseudo_vocabulary": the 1203 LVIS names)."""
    names = list(lvis_vocabulary())
    batch = xpm_batch()
    for x in batch:
        x["instances"].gt_classes[1] = names.index(category)
        x["pseudo_vocabulary"] = names
    return batch


def _lvis_pass(cache, quirk: bool, category: str):
    """One step on an LVIS-class pseudo instance: the losses and the pseudo pass's call
    of the RoI heads (targets, class text, keyword arguments)."""
    model = _student(cache, "MODEL.XPM.LVIS_BACKGROUND_QUIRK", str(quirk))
    _proposals_around_targets(model)
    calls = []
    original = model.roi_heads.losses

    def spy(features, proposals, targets, text, scale, **kwargs):
        calls.append((targets, text, kwargs))
        return original(features, proposals, targets, text, scale, **kwargs)

    model.roi_heads.losses = spy
    with EventStorage(0):
        losses = model(_lvis_batch(category))
    assert all(torch.isfinite(v) for v in losses.values())
    (_, seen_text, _), pseudo_call = calls
    assert len(seen_text) == 2  # the ground-truth pass: the seen names
    return model, losses, pseudo_call


@pytest.mark.parametrize("quirk", [False, True], ids=["plain", "quirk"])
def test_lvis_pseudo_instances_train_the_masks_and_classify_over_lvis(cache, quirk):
    model, losses, (targets, text, kwargs) = _lvis_pass(cache, quirk, "table")  # not COCO's
    # officially every LVIS name is a class; with the quirk id 0 ("aerosol can") is the
    # background: left out of the classes, its text scoring the background
    assert len(text) == (1202 if quirk else 1203)
    if quirk:
        torch.testing.assert_close(kwargs["background"], model.text(["aerosol can"]))
        torch.testing.assert_close(text, model.text(lvis_vocabulary()[1:]))
    else:
        assert kwargs["background"] is None
    want = lvis_vocabulary().index("table") - int(quirk)
    assert all(t.gt_classes.tolist() == [want] for t in targets)
    # the pseudo RoIs train the classifier (reweighted) and the class-agnostic masks
    assert float(losses["loss_cls_pseudo"]) > 0 and float(losses["loss_mask_pseudo"]) > 0
    assert kwargs["noisy_masks"] and not kwargs["box_reg"]


@pytest.mark.parametrize("quirk", [False, True], ids=["plain", "quirk"])
def test_aerosol_can_pseudo_instances_are_background_with_the_quirk(cache, quirk):
    _, losses, (targets, text, _) = _lvis_pass(cache, quirk, "aerosol can")
    assert all(t.gt_classes.tolist() == [len(text) if quirk else 0] for t in targets)
    assert float(losses["loss_cls_pseudo"]) > 0
    # officially label 0 is background: no positive RoI, so no mask loss (labels > 0 only)
    assert (float(losses["loss_mask_pseudo"]) == 0.0) == quirk


def test_the_lvis_quirk_needs_the_lvis_pseudo_vocabulary(cache):
    model = _student(cache, "MODEL.XPM.LVIS_BACKGROUND_QUIRK", "True")
    with pytest.raises(ValueError, match="CAPTION_VOCABULARY 'lvis'"):
        with EventStorage(0):
            model(xpm_batch())
    batch = _lvis_batch("table")
    for x in batch:
        x["pseudo_vocabulary"] = x["pseudo_vocabulary"][1:]  # not the LVIS list
    with pytest.raises(ValueError, match="must be LVIS id 0 'aerosol can'"):
        with EventStorage(0):
            model(batch)
    batch[0].pop("pseudo_vocabulary")
    with pytest.raises(ValueError, match="mixes pseudo vocabularies"):
        with EventStorage(0):
            model(batch)
