"""ZegCLIP on the tiny random CLIP: the shared frozen tower, what learns, losses, calibration,
transductive labels (hand-built inputs), checkpoints, golden outputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import (
    OpNames,
    Tol,
    assert_golden,
    random_image,
    tiny_zegclip,
    tiny_zegclip_cfg,
    two_region_batch,
)

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ovseg.clip.dense import patch_embedding
from ovseg.engine import solver
from ovseg.modeling.backbone import CLIPViTPrompted
from ovseg.modeling.losses import mask_losses, mask_targets, sigmoid_focal_terms
from ovseg.modeling.meta_arch.zegclip import ZegCLIP, calibrate, self_training_targets

GOLDEN = Path(__file__).resolve().parent / "golden" / "zegclip_tiny_vit.json"
NAMES = ["cat", "dog", "grass"]
SPLIT_DATASET = "zegclip_test_split"  # metadata only: 4 classes, "cow" and "sheep" unseen
MetadataCatalog.get(SPLIT_DATASET).set(
    stuff_classes=["cat", "cow", "grass", "sheep"],
    unseen_classes=["cow", "sheep"],
    seen_classes=["cat", "grass"],
    ignore_label=255,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "clip_cache"


@pytest.fixture
def model(cache):
    return tiny_zegclip(cache)


def _split_model(cache, setting="inductive", **zegclip):
    cfg = tiny_zegclip_cfg(cache, **zegclip)
    cfg.DATASETS.TRAIN = (SPLIT_DATASET,)
    cfg.MODEL.OVSEG.ZERO_SHOT_SETTING = setting
    torch.manual_seed(0)
    return build_model(cfg)


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------- the frozen shared tower
def test_backbone_shares_the_frozen_teacher_tower(model):
    assert isinstance(model.backbone, CLIPViTPrompted)
    assert model.backbone.tower is model.teacher.model.visual  # shared, not copied
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(n.startswith(("backbone.prompt", "decoder.")) for n in _trainable(model))
    assert {"backbone.prompts", "backbone.prompt_proj.weight"} <= _trainable(model)
    model.train()
    assert not model.backbone.tower.training and not model.teacher.model.training
    assert model.backbone.prompt_dropout.training and model.decoder.training


def test_backbone_outputs_any_size_and_prompt_depths(cache):
    for depth, sets in (("deep", 3), ("shallow", 1)):  # the tiny ViT has 3 blocks
        model = tiny_zegclip(cache, prompt_depth=depth)
        assert model.backbone.prompts.shape == (sets, 3, 64)  # tiny ViT width 64
        out = model.backbone(torch.randn(2, 3, 48, 80))  # grid 3 x 5, not the native 4 x 4
        assert out["patch_tokens"].shape == (2, 32, 3, 5)
        assert out["global_token"].shape == (2, 32)
        loss = out["patch_tokens"].square().sum() + out["global_token"].sum()
        loss.backward()
        # every block's prompt set receives a gradient (deep: each replaces the last one's)
        grads = model.backbone.prompts.grad.flatten(1).abs().sum(1)
        assert (grads > 0).all(), grads
        assert all(p.grad is None for p in model.teacher.parameters())
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        model.backbone(torch.randn(1, 3, 40, 48))


def test_deep_prompts_are_written_over_the_last_blocks_prompt_outputs(cache):
    # each block after the first replaces the previous block's prompt outputs: the same
    # tokens and gradients as concatenating [class, prompts, patches] anew, but the backward
    # zeroes the replaced tokens' gradient in one pass instead of padding two slices' back
    # to full size (slice_backward) and adding them
    backbone = tiny_zegclip(cache, prompt_depth="deep").backbone.double().eval()
    blocks = backbone.tower.transformer.resblocks
    n = backbone.num_prompts
    x = torch.randn(2, 3, 48, 64, dtype=torch.float64)
    seen = []
    hook = blocks[-1].register_forward_hook(lambda m, i, out: seen.append(out))
    ops = OpNames()
    try:
        with ops:
            backbone(x)
            last = seen[0]
            weights = torch.linspace(-1, 1, last.numel(), dtype=last.dtype).view_as(last)
            (last * weights).sum().backward()
    finally:
        hook.remove()
    assert "slice_backward" not in ops.names
    assert ops.names.count("slice_scatter") == 2 * (len(blocks) - 1)  # forward and backward
    grads = backbone.prompts.grad.clone()
    backbone.prompts.grad = None
    tokens, _ = backbone.tokens(x)
    for i, block in enumerate(blocks):
        rest = tokens[:, 1:] if i == 0 else tokens[:, 1 + n :]
        prompts = backbone._prompts(i, 2, tokens.dtype)
        tokens = block(torch.cat([tokens[:, :1], prompts, rest], dim=1))
    torch.testing.assert_close(last, tokens, rtol=0, atol=0)
    (tokens * weights).sum().backward()
    torch.testing.assert_close(grads, backbone.prompts.grad, rtol=1e-12, atol=1e-12)
    assert (grads.flatten(1).abs().sum(1) > 0).all()


def test_patch_stride_gives_a_finer_grid_of_overlapping_patches(cache):
    native = tiny_zegclip(cache)  # patch 16
    fine = tiny_zegclip(cache, patch_stride=8)
    tower = native.backbone.tower
    # same seed, same teacher weights: only the stride differs
    assert torch.equal(fine.backbone.tower.conv1.weight, tower.conv1.weight)
    x = torch.randn(1, 3, 48, 80)
    assert fine.backbone(x)["patch_tokens"].shape == (1, 32, 6, 10)
    assert fine.backbone.output_shape()["patch_tokens"].stride == 8
    # the patch embedding alone: window (i, j) is the 16-pixel patch centred on the
    # stride-8 cell (i, j), zero-padded by 4 at the border; every other window is a
    # native patch of the image shifted by 4 pixels
    with torch.no_grad():
        fine_grid = patch_embedding(fine.backbone.tower.conv1, x, fine.backbone.patch_stride)
        shifted = tower.conv1(F.pad(x, (4, 4, 4, 4))[..., :48, :80])
        assert torch.allclose(fine_grid[..., ::2, ::2], shifted, atol=1e-5)
        interior = tower.conv1(x[..., 4:, 4:])  # windows of the odd cells inside the image
        assert interior.shape[-2:] == (2, 4)
        assert torch.allclose(fine_grid[..., 1:5:2, 1:9:2], interior, atol=1e-5)
        # the native stride is the tower's own embedding
        assert torch.equal(
            patch_embedding(tower.conv1, x, native.backbone.patch_stride), tower.conv1(x)
        )
        # the model's masks come back at the image's size
        (out,) = fine.eval()([{"image": random_image(48, 80), "vocabulary": NAMES}])
        assert out["sem_seg"].shape == (3, 48, 80)
    for bad in (1, 3, 6, 32):  # 1 divides 16 but leaves an odd 15 to pad
        with pytest.raises(ValueError, match="PATCH_STRIDE"):
            tiny_zegclip(cache, patch_stride=bad)


def test_prompts_change_the_features(model):
    x = torch.randn(1, 3, 32, 32)
    before = model.backbone(x)["patch_tokens"].detach()
    with torch.no_grad():
        model.backbone.prompts[-1] += 1.0  # the last block's prompts only
    assert not torch.allclose(model.backbone(x)["patch_tokens"], before, atol=1e-4)


def test_optimizer_step_moves_prompts_and_decoder_not_the_teacher(cache):
    cfg = tiny_zegclip_cfg(cache)
    cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY = "ADAMW", 1e-2, 0.1
    torch.manual_seed(0)
    model = build_model(cfg)
    teacher = {k: v.clone() for k, v in model.teacher.model.state_dict().items()}
    student = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = solver.build_optimizer(cfg, model)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(student)
    model.train()
    loss = sum(model(two_region_batch()).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = model.teacher.model.state_dict()
    assert all(torch.equal(teacher[k], after[k]) for k in teacher)  # bit-equal
    moved = {
        n for n, p in model.named_parameters() if n in student and not torch.equal(student[n], p)
    }
    assert moved == set(student)


def test_checkpoint_holds_prompts_and_decoder_only(cache, tmp_path):
    model = tiny_zegclip(cache, seed=0)
    state = model.state_dict()
    assert state and all(k.startswith(("backbone.prompt", "decoder.")) for k in state)
    other = tiny_zegclip(cache, seed=0)  # the same random teacher, a different student:
    with torch.no_grad():
        for p in other.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    # a checkpoint that also carries tower/teacher weights (older format) loads strictly too
    full = dict(state)
    full["backbone.tower.proj"] = torch.zeros(1)
    full["teacher.model.logit_scale"] = torch.zeros(1)
    other.load_state_dict(full, strict=True)
    model.eval()
    other.eval()
    x = [{"image": random_image(32, 48), "vocabulary": NAMES}]
    with torch.no_grad():
        assert torch.equal(model(x)[0]["sem_seg"], other(x)[0]["sem_seg"])


# ---------------------------------------------------------------- inference
def test_eval_output_at_original_size_whole_and_slide(cache):
    for mode in ("whole", "slide"):
        cfg = tiny_zegclip_cfg(cache)
        cfg.TEST.INFERENCE_MODE = mode
        cfg.TEST.SLIDE_WINDOW, cfg.TEST.SLIDE_STRIDE = (32, 32), (24, 24)
        model = build_model(cfg).eval()
        with torch.no_grad():
            (out,) = model(
                [{"image": random_image(40, 70), "vocabulary": NAMES, "height": 81, "width": 35}]
            )
        scores = out["sem_seg"]
        assert scores.shape == (3, 81, 35)
        assert scores.min() >= 0 and scores.max() <= 1  # sigmoid; no seen classes here
    assert ZegCLIP.sem_seg_scores == "probabilities"


def test_calibration_lowers_seen_classes_of_an_inductive_model(cache):
    model = _split_model(cache).eval()
    assert model.seen_classes == {"cat", "grass"}
    names = ["Grass", "sheep", "cat", "dog"]  # matched case-insensitively; dog never trained
    seen = model._flags(names, model.seen_classes)
    assert seen.tolist() == [True, False, True, False]
    text = model.text_embeddings(names)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        raw, calibrated = model.predict(x, text), model.predict(x, text, seen)
        (out,) = model([{"image": random_image(32, 32), "vocabulary": names}])
    assert torch.allclose(calibrated, raw - 0.1 * seen.float().view(1, -1, 1, 1))
    assert out["sem_seg"][[0, 2]].max() <= 0.9 + 1e-6
    # a transductive model is not calibrated (the official self-training stage neither)
    model = _split_model(cache, "transductive", self_training_start_iter=0).eval()
    with torch.no_grad():
        assert torch.equal(model.predict(x, text, seen), model.predict(x, text))


def test_calibrate_hand_computed():
    scores = torch.tensor([0.5, 0.3, 0.05]).view(1, 3, 1, 1)
    out = calibrate(scores, torch.tensor([True, False, True]), 0.1)
    assert torch.allclose(out.flatten(), torch.tensor([0.4, 0.3, -0.05]))


# ---------------------------------------------------------------- losses
def test_mask_losses_of_an_absent_class_are_focal_only():
    # class 1 is absent: a negative everywhere for the focal term, but no dice term and not
    # counted (official ZegCLIP atm_loss.py:58-59, criterion.py:203: present classes only)
    target = torch.tensor([[[0, 0], [0, 255]]])
    focal, dice, n = mask_losses(torch.zeros(1, 2, 2, 2), target)
    assert n.item() == 1
    assert dice.item() == pytest.approx(1 - 4 / 5.5)  # p 0.5: sum p 1.5, sum t 3, sum pt 1.5
    # focal at p 0.5: ln 2 x 0.5^2 per pixel; the mean over the 3 labelled pixels of each
    # class, weighted 0.25 (class 0: positives) and 0.75 (class 1: negatives), summed
    assert focal.item() == pytest.approx(math.log(2) * 0.25 * (0.25 + 0.75))


def test_mask_losses_hand_computed():
    # zero logits: p = 0.5 everywhere, focal per pixel = ln 2 * 0.5**2 * (alpha or 1 - alpha)
    target = torch.tensor([[[0, 1], [255, 0]]])
    logits = torch.zeros(1, 2, 2, 2)
    unit = math.log(2) * 0.25
    focal, dice, n = mask_losses(logits, target)
    # 3 counted pixels; class 0: 2 positives, 1 negative; class 1: 1 positive, 2 negatives
    assert focal.item() == pytest.approx(unit * ((2 * 0.25 + 0.75) + (0.25 + 2 * 0.75)) / 3)
    # class 0: sum p = 1.5, sum t = 2, sum pt = 1; class 1: 1.5, 1, 0.5
    assert dice.item() == pytest.approx((1 - 3 / 4.5) + (1 - 2 / 3.5))
    assert n.item() == 2
    # the ignored pixel as a negative of both classes: 4 counted pixels
    focal, dice, n = mask_losses(logits, target, ignore_as_negative=True)
    assert focal.item() == pytest.approx(unit * ((2 * 0.25 + 2 * 0.75) + (0.25 + 3 * 0.75)) / 4)
    assert dice.item() == pytest.approx((1 - 3 / 5) + (1 - 2 / 4))
    # only class 0 gets a loss
    focal, dice, n = mask_losses(logits, target, classes=torch.tensor([True, False]))
    assert focal.item() == pytest.approx(unit * (2 * 0.25 + 0.75) / 3)
    assert dice.item() == pytest.approx(1 - 3 / 4.5) and n.item() == 1


def test_mask_losses_focal_of_one_pixel():
    p = torch.sigmoid(torch.tensor(2.0)).item()
    logits = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    focal, _, _ = mask_losses(logits, torch.tensor([[[0]]]), alpha=0.3, gamma=1.5)
    q = torch.sigmoid(torch.tensor(-1.0)).item()  # class 1 is a negative
    want = 0.3 * (1 - p) ** 1.5 * -math.log(p) + 0.7 * q**1.5 * -math.log(1 - q)
    assert focal.item() == pytest.approx(want, rel=1e-5)


def _one_hot_mask_losses(logits, target, ignore_value, classes, ignore_as_negative, alpha):
    # the formulation mask_losses had until 2026-12-05: one_hot targets, products by them
    valid = target != ignore_value
    counted = torch.ones_like(valid) if ignore_as_negative else valid
    labels = torch.where(valid, target, torch.zeros_like(target))
    pos = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).float() * valid[:, None]
    weight = counted[:, None].float()
    prob = logits.sigmoid()
    focal = sigmoid_focal_terms(logits, pos, alpha, 2.0, prob=prob)
    focal = (focal * weight).flatten(2).sum(2) / weight.flatten(1).sum(1).clamp(min=1)[:, None]
    prob, pos = (prob * weight).flatten(2), pos.flatten(2)
    dice = 1 - (2 * (prob * pos).sum(2) + 1) / (prob.sum(2) + pos.sum(2) + 1)
    present = (pos.sum(2) > 0) & classes
    return (focal * classes).sum(), (dice * present).sum(), present.sum()


@pytest.mark.parametrize("ignore_as_negative", [False, True])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_mask_losses_equal_the_one_hot_products_they_replace(ignore_as_negative, alpha):
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 9, 11), generator=g)
    target[target == 4] = 255
    target[1, :, :3] = 3  # class 3 present in one image only
    target[0][target[0] == 3] = 255
    classes = torch.tensor([True, True, False, True])
    logits = (torch.randn(2, 4, 9, 11, generator=g) * 3).requires_grad_(True)
    kw = dict(ignore_value=255, classes=classes, ignore_as_negative=ignore_as_negative)
    want = _one_hot_mask_losses(logits, target, 255, classes, ignore_as_negative, alpha)
    (sum(want[:2])).backward()
    want_grad, logits.grad = logits.grad, None
    got = mask_losses(logits, target, alpha=alpha, **kw)
    # the same terms; the old one_hot's permuted layout summed them in another order
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    (sum(got[:2])).backward()
    torch.testing.assert_close(logits.grad, want_grad, rtol=1e-6, atol=1e-9)
    # the targets made once, for several layers' logits: the same
    made = mask_targets(target, 4, ignore_value=255, ignore_as_negative=ignore_as_negative)
    again = mask_losses(logits, made, classes=classes, alpha=alpha)
    for a, b in zip(again, got):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="do not match logits"):
        mask_losses(logits[:, :3], made)


def test_model_losses_are_weighted_normalised_mask_losses(model):
    batch = two_region_batch()
    model.train()
    losses = model(batch)
    assert set(losses) == {f"loss_{k}{s}" for k in ("focal", "dice") for s in ("_0", "_1", "")}
    images = torch.stack(model.normalize([x["image"] for x in batch]))
    target = torch.stack([x["sem_seg"] for x in batch])
    masks = model.mask_logits(images, model.text_embeddings(batch[0]["vocabulary"]))
    for i, suffix in enumerate(("_0", "_1", "")):
        logits = F.interpolate(masks[i], size=(32, 32), mode="bilinear", align_corners=False)
        focal, dice, n = mask_losses(logits, target)
        assert n.item() == 6  # three classes in each of the two images
        assert losses[f"loss_focal{suffix}"].item() == pytest.approx(100 * focal.item() / 6)
        assert losses[f"loss_dice{suffix}"].item() == pytest.approx(dice.item() / 6)
    last_only = tiny_zegclip(model.teacher.cache_dir, deep_supervision=False).train()
    assert set(last_only(batch)) == {"loss_focal", "loss_dice"}


def test_loss_decreases_on_a_fixed_batch(model):
    batch = two_region_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    history = []
    # a 2 x 2 patch grid cannot draw the regions exactly: the loss falls by about a third
    for _ in range(8):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.8 * history[0], history


@pytest.mark.parametrize("self_attention", [False, True])
def test_decoder_self_attention_lets_classes_see_each_other(cache, self_attention):
    # MODEL.ZEGCLIP.DECODER_SELF_ATTENTION: self-attention among the class queries (an ovseg
    # option; the official decoder has none): with it, one class's text moves another
    # class's masks; without, each class is decoded alone
    model = tiny_zegclip(cache, decoder_self_attention=self_attention).eval()
    batch = two_region_batch()
    images = torch.stack(model.normalize([x["image"] for x in batch]))
    text = model.text_embeddings(batch[0]["vocabulary"])
    other = text.clone()
    other[2] = F.normalize(torch.randn_like(other[2]), dim=-1)
    with torch.no_grad():
        a, b = model.mask_logits(images, text)[-1], model.mask_logits(images, other)[-1]
    assert not torch.allclose(a[:, 2], b[:, 2])
    assert torch.allclose(a[:, :2], b[:, :2]) != self_attention
    model.train()
    loss = sum(model(batch).values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "self_attn" in n]
    assert bool(grads) == self_attention and all(g.abs().sum() > 0 for g in grads)


def test_prompts_without_their_projection_train(cache):
    # MODEL.ZEGCLIP.PROMPT_PROJ False: the deep prompts enter the blocks as they are
    model = tiny_zegclip(cache, prompt_proj=False).train()
    assert isinstance(model.backbone.prompt_proj, torch.nn.Identity)
    loss = sum(model(two_region_batch()).values())
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.prompts.grad.abs().sum() > 0


def test_labels_outside_the_vocabulary_raise(model):
    batch = two_region_batch()
    batch[0]["sem_seg"][5, 5] = 7
    model.train()
    with pytest.raises(ValueError, match=r"labels \[7\].*3-name vocabulary"):
        model(batch)


# ---------------------------------------------------------------- transductive labels
def test_transductive_targets_hand_built():
    target = torch.tensor([[[0, 255, 2], [255, 1, 2]]])
    # 4 classes, unseen 2 and 3: pixel (0, 1) prefers 3, pixel (1, 0) prefers 2 (class 0's
    # larger score is ignored: it is seen), the pixels labelled 2 prefer 3 and 2
    logits = torch.full((1, 4, 2, 3), -5.0)
    logits[0, 3, 0, 1], logits[0, 2, 0, 1] = 1.0, 0.5
    logits[0, 0, 1, 0], logits[0, 2, 1, 0], logits[0, 3, 1, 0] = 9.0, 0.2, 0.1
    logits[0, 3, 0, 2] = 2.0
    logits[0, 2, 1, 2] = 2.0
    unseen = torch.tensor([False, False, True, True])
    out = self_training_targets(target, logits, unseen, pixels="ignore")
    assert out.tolist() == [[[0, 3, 2], [2, 1, 2]]]  # only the ignored pixels change
    out = self_training_targets(target, logits, unseen, pixels="unseen")
    assert out.tolist() == [[[0, 255, 3], [255, 1, 2]]]  # unseen labels replaced, 255 kept
    with pytest.raises(ValueError, match="needs unseen classes"):
        self_training_targets(target, logits, torch.zeros(4, dtype=torch.bool))


def test_transductive_schedule_and_targets_in_the_model(cache):
    model = _split_model(cache, "transductive", self_training_start_iter=5)
    assert model.unseen_classes == {"cow", "sheep"}
    names = ("cat", "cow", "grass", "sheep")
    target = torch.tensor([[[0, 255], [2, 255]]])
    logits = torch.zeros(1, 4, 2, 2)
    logits[0, 3] = 1.0  # sheep everywhere
    with EventStorage(start_iter=4):
        assert not model.self_training_active()
        out, classes = model._targets(target, logits, names)
        assert torch.equal(out, target) and classes.tolist() == [True, False, True, False]
    with EventStorage(start_iter=5):
        assert model.self_training_active()
        out, classes = model._targets(target, logits, names)
        assert out.tolist() == [[[0, 3], [2, 3]]] and classes is None
    # outside a trainer the iteration is unknown: every student refuses alike
    with pytest.raises(RuntimeError, match="EventStorage"):
        model.self_training_active()

    # official protocol: unseen labels locate the pixels (setting "none"), never supervise
    model = _split_model(cache, "none", self_training_pixels="unseen", self_training_start_iter=5)
    target = torch.tensor([[[0, 1], [255, 3]]])
    with EventStorage(start_iter=0):
        out, classes = model._targets(target, logits, names)
        assert out.tolist() == [[[0, 255], [255, 255]]] and classes.tolist()[1] is False
    with EventStorage(start_iter=9):
        out, _ = model._targets(target, logits, names)
        assert out.tolist() == [[[0, 3], [255, 3]]]


def test_transductive_training_step_runs(cache):
    model = _split_model(cache, "transductive", self_training_start_iter=0).train()
    batch = two_region_batch(names=("cat", "cow", "grass", "sheep"))
    for x in batch:
        x["sem_seg"][20:, :8] = 255  # pixels to pseudo-label
    with EventStorage(start_iter=0):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("mapper_padded", [False, True])
def test_self_training_labels_no_padding(cache, monkeypatch, mapper_padded):
    """ "ignore" self-training labels a sample's ignored pixels, never the batch's padding:
    the model's own (to its size divisibility) or the mapper's (``content_size``)."""
    model = _split_model(cache, "transductive", self_training_start_iter=0).train()
    batch = two_region_batch(names=("cat", "cow", "grass", "sheep"), size=40)
    batch[1]["image"], batch[1]["sem_seg"] = batch[1]["image"][:, :24], batch[1]["sem_seg"][:24]
    if mapper_padded:  # as SemanticDatasetMapper pads with INPUT.IMAGE_PAD "gray"
        batch[1]["content_size"] = (24, 40)
        batch[1]["image"] = F.pad(batch[1]["image"], (0, 0, 0, 16), value=128)
        batch[1]["sem_seg"] = F.pad(batch[1]["sem_seg"], (0, 0, 0, 16), value=255)
    targets = []
    original = model._targets

    def spy(*args, **kwargs):  # the labels the mask losses are made of
        out = original(*args, **kwargs)
        targets.append(out[0])
        return out

    monkeypatch.setattr(model, "_targets", spy)
    with EventStorage(start_iter=0):
        model(batch)
    target = targets[-1]
    assert target.shape[-2:] == (48, 48)  # padded to the size divisibility (16)
    assert (target[0, :3, :3] != 255).all() and (target[1, :3, :3] != 255).all()  # labelled
    assert (target[0, 40:] == 255).all() and (target[0, :, 40:] == 255).all()
    assert (target[1, 24:] == 255).all() and (target[1, :, 40:] == 255).all()


def test_settings_are_checked(cache):
    with pytest.raises(ValueError, match="needs MODEL.OVSEG.ZERO_SHOT_SETTING 'transductive'"):
        _split_model(cache, "inductive", self_training_start_iter=0)
    with pytest.raises(ValueError, match="needs MODEL.OVSEG.ZERO_SHOT_SETTING 'none'"):
        _split_model(
            cache, "transductive", self_training_start_iter=0, self_training_pixels="unseen"
        )
    with pytest.raises(ValueError, match="SELF_TRAINING_PIXELS"):
        _split_model(cache, "none", self_training_start_iter=0, self_training_pixels="all")
    with pytest.raises(ValueError, match="PROMPT_DEPTH"):
        tiny_zegclip(cache, prompt_depth="middle")
    # fully supervised: every class counts as seen, none is left out of the loss
    model = _split_model(cache, "none")
    assert model.seen_classes == {"cat", "cow", "grass", "sheep"} and not model.unseen_classes
    assert _split_model(cache, "inductive").unseen_classes == frozenset()


def test_learned_background_replaces_its_text_and_learns(cache):
    seen_bg = _split_model(cache, "inductive", bg_embed=True, background_class="Grass ")
    assert seen_bg.bg_embed is not None
    with pytest.raises(ValueError, match="BG_EMBED: the background class 'cow'"):
        _split_model(cache, "inductive", bg_embed=True, background_class="cow")  # unseen
    model = tiny_zegclip(cache, bg_embed=True, background_class="Grass")
    plain = tiny_zegclip(cache)
    text, clip_text = model.text_embeddings(NAMES), plain.text_embeddings(NAMES)
    assert torch.allclose(text[:2], clip_text[:2])  # cat, dog: CLIP's text
    learned = F.normalize(model.bg_embed.embedding, dim=-1)[0]
    assert torch.allclose(text[2], learned) and not torch.allclose(text[2], clip_text[2])
    assert torch.allclose(model.text_embeddings(["cat"]), clip_text[:1], atol=1e-6)  # as is
    assert "classifier.bg_embed.embedding" in _trainable(model)
    assert "classifier.bg_embed.embedding" in model.state_dict()
    # a checkpoint from before the background moved into the text classifier still loads
    state = model.state_dict()
    state["bg_embed.embedding"] = state.pop("classifier.bg_embed.embedding") * 0 + 1
    assert not model.load_state_dict(state).missing_keys
    assert torch.equal(model.bg_embed.embedding, torch.ones_like(model.bg_embed.embedding))
    model.train()
    loss = sum(model(two_region_batch(NAMES)).values())
    loss.backward()
    assert model.bg_embed.embedding.grad.abs().sum() > 0


def _golden_outputs(cache) -> dict:
    model = tiny_zegclip(cache, seed=0)
    model.train()
    losses = model(two_region_batch())
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": random_image(40, 56, seed=3), "vocabulary": NAMES}])
        x = torch.stack(model.normalize([random_image(48, 64, seed=4)]))
        feats = model.backbone(x)
        masks = model.mask_logits(x, model.text_embeddings(NAMES))
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {
        "param_sum": sum(p.double().sum().item() for p in trainable),
        "losses": {k: v.item() for k, v in sorted(losses.items())},
        "patch_tokens": feats["patch_tokens"][0, :8, -1, -1].tolist(),
        "global_token": feats["global_token"][0, :8].tolist(),
        # initial mask logits are small (0.02-std decoder init): scaled to compare them
        "mask_logits_x100": [(100 * m[0, :, 1, ::2]).flatten().tolist() for m in masks],
        "scores": out["sem_seg"][:, ::8, ::8].flatten().tolist(),
    }


def test_golden_outputs(cache):
    # the losses were compared with pytest.approx(rel=1e-4, abs=1e-5), max(1e-4 |golden|,
    # 1e-5): every stored loss is above 0.1, where that is 1e-4 |golden|
    tensors = ("patch_tokens", "global_token", "mask_logits_x100", "scores")
    assert_golden(
        GOLDEN,
        _golden_outputs(cache),
        init=("param_sum",),
        tolerances={"losses": Tol(atol=0.0, rtol=1e-4), **dict.fromkeys(tensors, Tol(1e-4, 1e-5))},
        indent=1,
    )


def test_official_decoder_init_is_pytorchs_with_every_layer_a_copy_of_the_first():
    """ "official": the official train.py never calls the head's init_weights, so its layers
    keep PyTorch's init (nn.Linear: kaiming-uniform weights, std 1 / sqrt(3 fan_in), uniform
    biases) and nn.TransformerDecoder's clones start equal; "trunc_normal" is that dead
    init_weights (std 0.02, zero biases, every layer its own draw)."""
    from ovseg.modeling.heads.zegclip_decoder import ZegCLIPDecoder

    torch.manual_seed(0)
    dim = 64
    official = ZegCLIPDecoder(dim, num_heads=4, num_layers=3, init="official")
    first = official.layers[0].state_dict()
    for layer in official.layers[1:]:
        own = layer.state_dict()
        assert own and all(torch.equal(v, first[k]) for k, v in own.items())
    assert set(official.layers[2].state_dict()) < set(first)  # the mask-only last layer
    ffn = official.layers[0].linear2  # fan_in 4 * dim
    assert ffn.weight.std().item() == pytest.approx((3 * 4 * dim) ** -0.5, rel=0.05)
    assert ffn.bias.abs().max() > 0 and ffn.bias.abs().max() <= (4 * dim) ** -0.5
    q_proj = official.q_proj.weight  # fan_in 2 * dim
    assert q_proj.std().item() == pytest.approx((3 * 2 * dim) ** -0.5, rel=0.05)

    torch.manual_seed(0)
    trunc = ZegCLIPDecoder(dim, num_heads=4, num_layers=3, init="trunc_normal")
    linears = [m for m in trunc.modules() if isinstance(m, torch.nn.Linear)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    assert trunc.layers[0].linear2.weight.std().item() == pytest.approx(0.02, rel=0.05)
    q0, q1 = (trunc.layers[i].cross_attn.q.weight for i in (0, 1))
    assert not torch.equal(q0, q1)
    torch.manual_seed(0)
    default = ZegCLIPDecoder(dim, num_heads=4, num_layers=3)  # ovseg's default
    assert all(torch.equal(a, b) for a, b in zip(default.parameters(), trunc.parameters()))


def test_clip_decoder_init_starts_from_the_patch_text_cosine():
    from ovseg.modeling.heads.zegclip_decoder import ZegCLIPDecoder

    with pytest.raises(ValueError, match="DECODER_INIT='random'"):
        ZegCLIPDecoder(8, num_heads=2, init="random")
    torch.manual_seed(0)
    dim, heads = 8, 2
    decoder = ZegCLIPDecoder(dim, num_heads=heads, dropout=0.0, init="clip").eval()
    patch = F.normalize(torch.randn(2, dim, 3, 4), dim=1)
    glob = F.normalize(torch.randn(2, dim), dim=-1)
    text = F.normalize(torch.randn(5, dim), dim=-1)
    first = decoder(patch, glob, text)[0]  # (B, K, h, w)
    cosine = torch.einsum("kd,bdhw->bkhw", text, patch)
    # head-averaged scaled dot products of identity projections: cos / (heads * sqrt(dim/heads))
    assert torch.allclose(first, cosine / (heads * math.sqrt(dim / heads)), atol=1e-6)
    official = ZegCLIPDecoder(dim, num_heads=heads, dropout=0.0).eval()
    assert not torch.allclose(official(patch, glob, text)[0], first, atol=1e-3)
