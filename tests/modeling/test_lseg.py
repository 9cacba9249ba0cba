"""LSeg on the tiny random CLIP: shapes, training behaviour, vocabularies, spatial
regularisation, checkpoints, zero-shot targets through the real mapper, golden outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ovseg_testing import (
    OpNames,
    Tol,
    assert_golden,
    fit_steps,
    random_image,
    registered_ade20k,
    tiny_lseg,
    tiny_lseg_cfg,
    two_region_batch,
)
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from ovseg.data.dataset_mappers import build_dataset_mapper
from ovseg.modeling.meta_arch.lseg import LSeg, SpatialRegularization

GOLDEN = Path(__file__).resolve().parent / "golden" / "lseg_tiny_vit.json"
NAMES = ["cat", "dog", "grass"]


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "clip_cache"


@pytest.fixture
def model(cache):
    return tiny_lseg(cache)


def _eval_input(h, w, **extra):
    return {"image": random_image(h, w), **extra}


# ---------------------------------------------------------------- shapes and vocabularies
@pytest.mark.parametrize("size", [(64, 64), (37, 53), (75, 90), (16, 120)])
def test_eval_output_at_original_size(model, size):
    model.eval()
    h, w = size
    with torch.no_grad():
        (out,) = model([_eval_input(h, w, height=2 * h + 1, width=w, vocabulary=NAMES)])
    scores = out["sem_seg"]
    assert scores.shape == (3, 2 * h + 1, w)
    # probabilities over the vocabulary
    assert torch.allclose(scores.sum(0), torch.ones(2 * h + 1, w), atol=1e-5)


def test_predict_sizes_and_padding(model):
    model.eval()
    text = model.text_embeddings(NAMES)
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        assert model.predict(x, text).shape == (2, 3, 37, 53)
        emb = model.pixel_embeddings(torch.randn(1, 3, 48, 64))
    # the DPT head sits at stride 2; embeddings are unit vectors of the text dimension
    assert emb.shape == (1, model.teacher.embed_dim, 24, 32)
    assert torch.allclose(emb.norm(dim=1), torch.ones(1, 24, 32), atol=1e-5)


def test_slide_inference_and_mixed_inputs(cache):
    cfg = tiny_lseg_cfg(cache)
    cfg.TEST.INFERENCE_MODE = "slide"
    cfg.TEST.SLIDE_WINDOW = (32, 32)
    cfg.TEST.SLIDE_STRIDE = (24, 24)
    model = build_model(cfg).eval()
    inputs = [
        _eval_input(50, 70, vocabulary=NAMES),
        _eval_input(40, 40, vocabulary=["a", "b", "c", "d", "e"], height=20, width=20),
        _eval_input(50, 70, vocabulary=["sky"]),
    ]
    with torch.no_grad():
        outs = model(inputs)
    assert [tuple(o["sem_seg"].shape) for o in outs] == [(3, 50, 70), (5, 20, 20), (1, 50, 70)]
    assert torch.allclose(outs[2]["sem_seg"], torch.ones(1, 50, 70))


def test_test_vocabulary_of_another_size(model):
    model.train()
    model(two_region_batch())["loss_sem_seg"].backward()
    model.eval()
    for names in (["x"], ["a", "b"], [f"class {i}" for i in range(40)]):
        with torch.no_grad():
            (out,) = model([_eval_input(32, 48, vocabulary=names)])
        assert out["sem_seg"].shape == (len(names), 32, 48)


def test_default_vocabulary_and_missing_one(cache):
    model = tiny_lseg(cache).eval()
    assert model.vocabulary is None
    with pytest.raises(ValueError, match="carries no 'vocabulary'"):
        model([_eval_input(32, 32)])
    cfg = tiny_lseg_cfg(cache)
    cfg.DATASETS.TEST = ("voc_sem_seg_val",)
    model = build_model(cfg).eval()
    assert list(model.vocabulary) == MetadataCatalog.get("voc_sem_seg_val").stuff_classes
    with torch.no_grad():
        (out,) = model([_eval_input(32, 32)])
    assert out["sem_seg"].shape == (20, 32, 32)


# ---------------------------------------------------------------- training behaviour
def test_backward_changes_student_not_teacher(model):
    teacher_before = {k: v.clone() for k, v in model.teacher.model.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not any(k.startswith("teacher.") for k in student_before)
    params = [p for p in model.parameters() if p.requires_grad]
    assert not any(p is q for p in params for q in model.teacher.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    model.train()
    model(two_region_batch())["loss_sem_seg"].backward()
    opt.step()
    assert all(p.grad is None for p in model.teacher.parameters())
    for k, v in model.teacher.model.state_dict().items():
        assert torch.equal(v, teacher_before[k]), f"teacher weight {k} changed"
    after = model.state_dict()
    for prefix in ("backbone.resblocks.0.", "backbone.conv1.", "backbone.readouts.", "decoder."):
        keys = [k for k in after if k.startswith(prefix) and after[k].is_floating_point()]
        assert keys and any(not torch.equal(after[k], student_before[k]) for k in keys), prefix


def test_backbone_starts_as_a_copy_of_the_teacher_tower(model):
    visual = model.teacher.model.visual
    assert model.backbone.conv1 is not visual.conv1
    assert torch.equal(model.backbone.conv1.weight, visual.conv1.weight)
    last = visual.transformer.resblocks[-1]
    assert torch.equal(model.backbone.resblocks[-1].mlp.c_fc.weight, last.mlp.c_fc.weight)
    # the CLIP model's own normalisation, not cfg.MODEL.PIXEL_MEAN
    assert torch.allclose(model.pixel_mean.flatten(), model.teacher.pixel_mean.flatten())


def test_loss_decreases_on_a_fixed_batch(model):
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = two_region_batch()
    losses = fit_steps(model, batch, opt, 10, key="loss_sem_seg")
    # uniform over 3 classes is log 3 = 1.10; a colour-determined target is learnable
    assert losses[-1] < 0.5 * losses[0], losses
    assert losses[-1] < math.log(3) / 2, losses


def test_loss_ignores_pixels_and_checks_labels(model):
    model.train()
    batch = two_region_batch()
    for inp in batch:
        inp["sem_seg"][:] = 255
    loss = model(batch)["loss_sem_seg"]
    assert loss.item() == 0.0 and loss.requires_grad
    batch[0]["sem_seg"][5, 5] = 3  # a label outside the 3-name vocabulary
    with pytest.raises(ValueError, match=r"labels \[3\].*outside the 3-name vocabulary"):
        model(batch)
    del batch[0]["vocabulary"]
    with pytest.raises(ValueError, match="lacks 'sem_seg' or 'vocabulary'"):
        model(batch)


def test_loss_is_cross_entropy_of_scaled_cosines(model):
    """Hand-check: the loss equals softmax CE over logit_scale * cosine at full resolution."""
    model.train()
    for m in model.modules():  # running statistics: both computations see the same net
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    batch = two_region_batch(n=1)
    images = (batch[0]["image"].float()[None] - model.pixel_mean) / model.pixel_std
    loss = model(batch)["loss_sem_seg"]
    emb = model.pixel_embeddings(images)
    text = model.text_embeddings(batch[0]["vocabulary"])
    cos = torch.einsum("bdhw,kd->bkhw", emb, text)
    logits = torch.nn.functional.interpolate(
        cos / 0.07, size=(32, 32), mode="bilinear", align_corners=True
    )
    want = torch.nn.functional.cross_entropy(logits, batch[0]["sem_seg"][None], ignore_index=255)
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)


def test_per_image_loss_weighs_every_image_the_same(cache):
    """LOSS_NORMALIZATION "images": each image's mean over its labelled pixels, then the mean
    over the images (the official ADE20K run's one image per GPU); "pixels" pools the batch's
    labelled pixels, so a mostly ignored (padded) crop weighs less."""
    pooled = tiny_lseg(cache).train()
    per_image = tiny_lseg(cache, loss_normalization="images").train()
    for model in (pooled, per_image):
        for m in model.modules():  # the same net for every computation
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    batch = two_region_batch(n=2)
    batch[1]["sem_seg"][:, :24] = 255  # the second crop mostly padding
    singles = []
    for inp in batch:
        singles.append(pooled([inp])["loss_sem_seg"])
    counts = [int((inp["sem_seg"] != 255).sum()) for inp in batch]
    want_images = sum(singles) / 2
    want_pixels = sum(s * n for s, n in zip(singles, counts)) / sum(counts)
    assert per_image(batch)["loss_sem_seg"].item() == pytest.approx(want_images.item(), rel=1e-4)
    assert pooled(batch)["loss_sem_seg"].item() == pytest.approx(want_pixels.item(), rel=1e-4)
    assert abs(want_images.item() - want_pixels.item()) > 1e-3
    # an image without a labelled pixel is left out of the mean; none at all gives 0
    batch[1]["sem_seg"][:] = 255
    assert per_image(batch)["loss_sem_seg"].item() == pytest.approx(singles[0].item(), rel=1e-4)
    batch[0]["sem_seg"][:] = 255
    loss = per_image(batch)["loss_sem_seg"]
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="LOSS_NORMALIZATION 'batch'"):
        tiny_lseg(cache, loss_normalization="batch")


def test_half_logits_are_the_official_fp16_products(cache):
    """HALF_LOGITS: (scale * features.half()) @ text.half() in float16, then float32, as
    lseg_net.py:194; close to the float32 products, not equal."""
    full, half = tiny_lseg(cache).eval(), tiny_lseg(cache, half_logits=True).eval()
    assert half.half_logits and not full.half_logits
    emb = torch.nn.functional.normalize(torch.randn(1, 32, 4, 5), dim=1)
    text = full.text_embeddings(["sky", "grass", "cow"])
    want = torch.einsum("bdhw,kd->bkhw", (half.logit_scale * emb.half()), text.half()).float()
    out, ref = half.logits(emb, text, (4, 5)), full.logits(emb, text, (4, 5))
    assert out.dtype == torch.float32 and torch.equal(out, want)
    assert torch.allclose(out, ref, atol=0.05) and not torch.equal(out, ref)
    # under bf16 autocast (the GPU table's precision) the product stays fp16: autocast cast
    # the fp16 operands to bf16, a second rounding and two more passes over the features
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(half.logits(emb, text, (4, 5)), want)
    half.train()
    half(two_region_batch())["loss_sem_seg"].backward()  # trains through the fp16 product


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "half-logits"])
def test_logits_copy_neither_the_embeddings_nor_their_gradient(cache, half):
    """The pixel-text product broadcasts the text over the batch: forward and backward
    dispatch no copy of the (B, D, h, w) embeddings (einsum copied them pixel-major), and the
    logits are einsum's, for channels-last embeddings too."""
    model = tiny_lseg(cache, half_logits=half).double()
    text = model.text_embeddings(["sky", "grass", "cow"]).double()
    raw = torch.randn(2, 32, 4, 5, dtype=torch.float64, requires_grad=True)
    with OpNames() as ops:
        out = model.logits(torch.nn.functional.normalize(raw, dim=1), text, (8, 10))
        out.sum().backward()
    assert "bmm" in ops.names and not {"clone", "copy_", "contiguous"} & set(ops.names)
    if half:
        return
    emb = torch.nn.functional.normalize(raw.detach(), dim=1)
    scale = model.classifier.logit_scale
    want = scale * torch.einsum("bdhw,kd->bkhw", emb, text)
    for layout in (emb, emb.to(memory_format=torch.channels_last)):
        got = model.classifier.logits(layout, text)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_learnable_logit_scale(cache):
    fixed = tiny_lseg(cache)
    assert float(fixed.logit_scale) == pytest.approx(1 / 0.07)
    assert not any("log_logit_scale" in k for k in dict(fixed.named_parameters()))
    model = tiny_lseg(cache, learnable_logit_scale=True, logit_scale=10.0).train()
    assert model.logit_scale.item() == pytest.approx(10.0)
    model(two_region_batch())["loss_sem_seg"].backward()
    param = model.classifier.log_logit_scale
    assert param.grad is not None and param.grad.abs() > 0
    with torch.no_grad():  # capped at 100, as CLIP's learned temperature
        param.fill_(math.log(500.0))
    assert float(model.logit_scale) == pytest.approx(100.0)


def test_checkpoint_with_the_old_temperature_name_loads(cache):
    """Checkpoints saved before the temperature moved into the text classifier still load."""
    model = tiny_lseg(cache, learnable_logit_scale=True, logit_scale=10.0)
    state = model.state_dict()
    state["log_logit_scale"] = state.pop("classifier.log_logit_scale") + 1.0
    other = tiny_lseg(cache, learnable_logit_scale=True, logit_scale=10.0)
    assert not other.load_state_dict(state, strict=True).missing_keys
    assert other.logit_scale.item() == pytest.approx(10.0 * math.e, rel=1e-5)


# ---------------------------------------------------------------- spatial regularisation
def test_spatial_regularization_hand_computed():
    logits = torch.randn(2, 4, 5, 6)
    block = SpatialRegularization("depthwise", depth=1)
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.weight[0, 0, 1, 1] = 1.0  # identity kernel
        block.conv.bias.zero_()
    assert torch.allclose(block(logits), logits)
    bottleneck = SpatialRegularization("bottleneck", depth=1)
    with torch.no_grad():
        bottleneck.conv.weight.zero_()
        bottleneck.conv.bias.fill_(0.5)
    want = logits.amax(dim=1, keepdim=True).expand_as(logits) + 0.5
    assert torch.allclose(bottleneck(logits), want)
    # depth 2 with ReLU: identity, ReLU, identity = relu(x)
    relu = SpatialRegularization("depthwise", depth=2, activation="relu")
    relu.load_state_dict(block.state_dict())
    assert torch.allclose(relu(logits), logits.clamp(min=0))
    with pytest.raises(ValueError, match="'mean'.*MODEL.LSEG.SPATIAL_REG"):
        SpatialRegularization("mean")
    with pytest.raises(ValueError, match="SPATIAL_REG_DEPTH must be >= 1"):
        SpatialRegularization("depthwise", depth=0)


@pytest.mark.parametrize("kind,depth", [("depthwise", 1), ("depthwise", 3), ("bottleneck", 2)])
def test_spatial_regularization_variants_train_and_infer(cache, kind, depth):
    model = tiny_lseg(cache, spatial_reg=kind, spatial_reg_depth=depth).train()
    assert isinstance(model.spatial_reg, SpatialRegularization)
    model(two_region_batch())["loss_sem_seg"].backward()
    assert model.spatial_reg.conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        (out,) = model([_eval_input(37, 41, vocabulary=["a", "b"])])
    assert out["sem_seg"].shape == (2, 37, 41)


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_without_teacher(cache):
    model = tiny_lseg(cache, seed=1).eval()
    state = model.state_dict()
    assert not any(k.startswith("teacher.") for k in state)
    # the same teacher (same seed: its weights come from MODEL.CLIP), a different student
    other = tiny_lseg(cache, seed=1).eval()
    with torch.no_grad():
        for p in other.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    inp = _eval_input(32, 32, vocabulary=NAMES)
    with torch.no_grad():
        want = model([inp])[0]["sem_seg"]
        assert not torch.allclose(other([inp])[0]["sem_seg"], want)
        other.load_state_dict(state)  # strict: the teacher is neither missing nor unexpected
        assert torch.equal(other([inp])[0]["sem_seg"], want)


# ---------------------------------------------------------------- zero-shot targets
@pytest.fixture
def ade_with_unseen(tmp_path):
    """ADE20K-150 in its prepared layout whose labels include unseen classes."""
    root = tmp_path / "datasets"
    vocab = MetadataCatalog.get("ade20k_sem_seg_train")
    classes = vocab.stuff_classes
    unseen = [classes.index(n) for n in vocab.unseen_classes[:2]]
    seen = [i for i in range(len(classes)) if classes[i] not in vocab.unseen_classes][:2]
    labels = (seen[0], unseen[0], seen[1], unseen[1])
    for split, stem in (("training", "ADE_train_0"), ("validation", "ADE_val_0")):
        for sub in ("images", "annotations_detectron2"):
            (root / "ADEChallengeData2016" / sub / split).mkdir(parents=True)
        label = np.kron(np.array(labels, np.uint8).reshape(2, 2), np.ones((32, 32), np.uint8))
        img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        base = root / "ADEChallengeData2016"
        Image.fromarray(img).save(base / "images" / split / f"{stem}.jpg")
        Image.fromarray(label).save(base / "annotations_detectron2" / split / f"{stem}.png")
    with registered_ade20k(root):
        yield labels


def test_unseen_classes_never_become_targets(cache, ade_with_unseen, monkeypatch):
    cfg = tiny_lseg_cfg(cache)
    cfg.DATASETS.TRAIN = ("ade20k_sem_seg_train",)
    cfg.MODEL.OVSEG.ZERO_SHOT_SETTING = "inductive"
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.CROP.ENABLED = False
    mapper = build_dataset_mapper(cfg, True, "ade20k_sem_seg_train")
    from detectron2.data import DatasetCatalog

    (sample,) = [mapper(d) for d in DatasetCatalog.get("ade20k_sem_seg_train")]
    meta = MetadataCatalog.get("ade20k_sem_seg_train")
    unseen = set(meta.unseen_classes)
    assert not unseen & set(sample["vocabulary"]) and len(sample["vocabulary"]) == 135
    # the two unseen quadrants are ignored, the two seen ones are labelled
    assert int((sample["sem_seg"] == 255).sum()) == 2 * 32 * 32

    model = build_model(cfg).train()
    asked = []
    real = model.text_embeddings
    monkeypatch.setattr(model, "text_embeddings", lambda names: asked.append(names) or real(names))
    model([sample])["loss_sem_seg"].backward()
    assert asked and all(not unseen & set(names) for names in asked)
    targets = sample["sem_seg"][sample["sem_seg"] != 255].unique().tolist()
    assert {sample["vocabulary"][t] for t in targets} <= set(meta.seen_classes)


# ---------------------------------------------------------------- golden outputs
def _golden_outputs(cache) -> dict:
    model = tiny_lseg(cache, seed=0)
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    model.eval()
    with torch.no_grad():
        (out,) = model([_eval_input(37, 50, vocabulary=NAMES)])
        emb = model.pixel_embeddings(torch.linspace(-2, 2, 3 * 48 * 40).view(1, 3, 48, 40))
    probs = out["sem_seg"]
    model.train()
    loss = model(two_region_batch())["loss_sem_seg"]
    return {
        "param_sum": sum(v.double().sum().item() for v in state.values()),
        "param_abs_sum": sum(v.double().abs().sum().item() for v in state.values()),
        "probs_corners": [probs[:, 0, 0].tolist(), probs[:, -1, -1].tolist()],
        "probs_rows": probs[:, 18, ::7].tolist(),
        "embedding": [emb[0, :8, 0, 0].tolist(), emb[0, :8, -1, 5].tolist()],
        "train_loss": loss.item(),
    }


def test_golden_outputs(cache):
    assert_golden(
        GOLDEN,
        _golden_outputs(cache),
        init=("param_sum", "param_abs_sum"),
        tolerances=dict.fromkeys(
            ("probs_corners", "probs_rows", "embedding", "train_loss"), Tol(atol=1e-4)
        ),
    )


def test_registered_and_typed(model):
    assert isinstance(model, LSeg)
