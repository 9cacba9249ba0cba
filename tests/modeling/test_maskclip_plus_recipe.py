"""MaskCLIP+'s official-recipe switches on the tiny model (which pixels get pseudo-labels, the
raw dot-product classifier, the loss over all pixels, the teacher's input normalisation, the
background's initialisation, heads without an output projection, mmseg's training resize),
and the paper configs resolving to the official settings (chongzhou96/MaskCLIP @245d31f)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import (
    ADE,
    BED,
    CONFIGS,
    GRASS,
    SKY,
    TABLE,
    TINY_RN,
    TINY_VIT,
    make_store,
    random_image,
    tiny_maskclip_plus,
    write_unseen_fixture,
    zero_shot_train_mapper,
)
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.utils.events import EventStorage

from ovseg import add_ovseg_config
from ovseg.clip.prompt_names import apply_prompt_names, get_prompt_names
from ovseg.data.dataset_mappers import RatioRangeResize, training_resize
from ovseg.data.dataset_mappers.resize import rescaled_size
from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.modeling.heads.deeplab import (
    DeepLabV2Head,
    DeepLabV3PlusHead,
    DepthwiseSeparableASPPHead,
)
from ovseg.modeling.meta_arch.maskclip_plus_build import check_zero_shot_setting
from ovseg.modeling.meta_arch.maskclip_plus_targets import (
    TeacherLabelling,
    augmented_image_labels,
    restandardized,
)
from ovseg.pseudo import attach_pseudo_labels
from ovseg.vocab import Vocabulary, normalize_name

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNSEEN = tuple(n for n in ADE.names if n in ADE.unseen)
OFFICIAL = ("MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_PIXELS", "unseen")


def build(tmp_path, *opts, **overrides):
    return tiny_maskclip_plus(tmp_path / "cache", *opts, **overrides)


def store_of(root, dicts, names, label_of):
    """A store whose label at every pixel of an image is ``label_of(gt)`` (a function of
    the image's ground truth); returns the attached dicts and the store."""
    store = make_store(root, names)
    for d in dicts:
        gt = np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64)
        store.write(d["image_id"], label_of(gt), np.ones(gt.shape))
    return attach_pseudo_labels(dicts, store), store


def zero_logits(samples, k: int = len(ADE.names)) -> torch.Tensor:
    h, w = samples[0]["image"].shape[-2:]
    return torch.zeros(len(samples), k, h, w)


# ---------------------------------------------------------------- which pixels
def test_unseen_pixels_get_the_unseen_argmax_and_void_stays_ignored(tmp_path):
    dicts = write_unseen_fixture(tmp_path / "data", n=2)
    # the store says "table" everywhere: on grass, table, seen and void pixels alike
    table = UNSEEN.index(ADE.names[TABLE])
    attached, store = store_of(tmp_path / "s", dicts, UNSEEN, lambda gt: np.full(gt.shape, table))
    model = build(tmp_path, *OFFICIAL)
    samples = [zero_shot_train_mapper("none", store=store)(d) for d in attached]
    targets = model.training_targets(samples, zero_logits(samples), iteration=0)
    for s, tgt in zip(samples, targets):
        gt = s["sem_seg"]
        unseen = (gt == GRASS) | (gt == TABLE)
        assert (gt == GRASS).any() and (tgt[unseen] == TABLE).all()
        seen = (gt == SKY) | (gt == BED)
        assert torch.equal(tgt[seen], gt[seen])
        assert (gt == 255).any() and (tgt[gt == 255] == 255).all()  # void is not labelled

    # today's "ignore" rule labels the void pixels too (and needs the transductive mapping)
    legacy = build(tmp_path)
    samples_t = [zero_shot_train_mapper("transductive", store=store)(d) for d in attached]
    targets_t = legacy.training_targets(samples_t, zero_logits(samples_t), iteration=0)
    void = torch.stack([s["sem_seg"] for s in samples]) == 255
    assert (targets_t[void] == TABLE).all()


def test_all_scored_classes_label_free_pixels_only_with_unseen_winners(tmp_path):
    # PSEUDO_LABEL_CLASSES "all" (the ovseg-variant transductive configs): the argmax runs
    # over the whole vocabulary, and a free pixel takes it only when it is an unseen class
    dicts = write_unseen_fixture(tmp_path / "data", n=1)
    attached, store = store_of(
        tmp_path / "s", dicts, UNSEEN, lambda gt: np.full(gt.shape, UNSEEN.index(ADE.names[GRASS]))
    )
    opts = ("MODEL.OVSEG.SELF_TRAINING.START_ITER", "3")
    model = build(tmp_path, *opts, "MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_CLASSES", "all")
    sample = zero_shot_train_mapper(store=store)(attached[0])
    free = sample["sem_seg"] == 255
    logits = zero_logits([sample])
    logits[:, TABLE] = 5.0  # unseen
    logits[:, SKY] = 9.0  # seen, the best of all
    target = model.training_targets([sample], logits, iteration=3)[0]
    assert free.any() and (target[free] == 255).all()
    logits[:, SKY] = 0.0
    target = model.training_targets([sample], logits, iteration=3)[0]
    assert (target[free] == TABLE).all()


def test_unseen_labels_never_become_targets(tmp_path):
    """A teacher label below threshold leaves an unseen pixel ignored, not its ground truth."""
    dicts = write_unseen_fixture(tmp_path / "data", n=1)
    model = build(tmp_path, *OFFICIAL, "MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD", "0.5")
    store = make_store(tmp_path / "s", UNSEEN, threshold=0.5)
    gt = np.asarray(Image.open(dicts[0]["sem_seg_file_name"])).astype(np.int64)
    store.write(dicts[0]["image_id"], np.full(gt.shape, store.ignore_value), np.zeros(gt.shape))
    sample = zero_shot_train_mapper("none", store=store)(attach_pseudo_labels(dicts, store)[0])
    target = model.training_targets([sample], zero_logits([sample]), iteration=0)[0]
    unseen = torch.isin(sample["sem_seg"], torch.tensor([GRASS, TABLE]))
    assert unseen.any() and (target[unseen] == 255).all()
    assert not torch.isin(target, torch.tensor([GRASS, TABLE])).any()


def test_self_training_takes_the_argmax_over_the_unseen_classes(tmp_path):
    dicts = write_unseen_fixture(tmp_path / "data", n=1)
    model = build(tmp_path, *OFFICIAL, "MODEL.OVSEG.SELF_TRAINING.START_ITER", "0")
    sample = zero_shot_train_mapper("none")(dicts[0])
    logits = zero_logits([sample])
    logits[:, SKY] = 9.0  # a seen class wins overall; only unseen classes are candidates
    logits[:, GRASS] = 3.0
    target = model.training_targets([sample], logits, iteration=0)[0]
    gt = sample["sem_seg"]
    unseen = (gt == GRASS) | (gt == TABLE)
    assert (target[unseen] == GRASS).all()
    assert torch.equal(target[~unseen], gt[~unseen])


def test_annotation_free_unseen_pixels_are_the_labelled_ones(tmp_path):
    """Official annotation-free runs suppress every class: each labelled pixel gets the
    teacher's label over all classes, void stays ignored."""
    dicts = write_unseen_fixture(tmp_path / "data", n=1)
    attached, store = store_of(tmp_path / "s", dicts, ADE.names, lambda gt: np.full(gt.shape, BED))
    opts = (*OFFICIAL, "MODEL.MASKCLIP_PLUS.ANNOTATION_FREE", "True")
    model = build(tmp_path, *opts, "MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_CLASSES", "all", unseen=())
    sample = zero_shot_train_mapper("none", store=store)(attached[0])
    target = model.training_targets([sample], zero_logits([sample]), iteration=0)[0]
    void = sample["sem_seg"] == 255
    assert void.any() and (target[void] == 255).all() and (target[~void] == BED).all()


def test_pixel_rule_needs_its_zero_shot_setting(tmp_path):
    cfg = build_cfg_for_settings("transductive", "unseen")
    with pytest.raises(ValueError, match="needs MODEL.OVSEG.ZERO_SHOT_SETTING 'none'"):
        check_zero_shot_setting(cfg)
    with pytest.raises(ValueError, match="PSEUDO_LABEL_PIXELS 'unseen' with 'none'"):
        check_zero_shot_setting(build_cfg_for_settings("none", "ignore"))
    check_zero_shot_setting(build_cfg_for_settings("none", "unseen"))
    with pytest.raises(ValueError, match="PSEUDO_LABEL_PIXELS='everywhere' is not one of"):
        build(tmp_path, pseudo_label_pixels="everywhere")


def build_cfg_for_settings(setting: str, pixels: str):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.DATASETS.TRAIN = ("any_training_set",)
    cfg.MODEL.OVSEG.ZERO_SHOT_SETTING = setting
    cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_PIXELS = pixels
    return cfg


# ---------------------------------------------------------------- classifier and loss
def test_raw_dot_product_classifier(tmp_path):
    model = build(
        tmp_path, "MODEL.MASKCLIP_PLUS.NORMALIZE_EMBEDDINGS", "False",
        "MODEL.OVSEG.LOGIT_SCALE", "1.0", "MODEL.SEM_SEG_HEAD.OUTPUT_PROJECTION", "False",
    ).eval()  # fmt: skip
    images = torch.randn(1, 3, 48, 64)
    raw = model.head(model.backbone(images))
    emb = model.pixel_embeddings(images)
    assert torch.equal(emb, raw) and not torch.allclose(emb.norm(dim=1), torch.ones(1))
    assert (emb >= 0).all()  # the ReLU'd ASPP sum itself
    text = model.text_embeddings(["sky", "grass"])
    logits = model.logits(emb, text, tuple(emb.shape[-2:]))
    assert torch.allclose(logits, torch.einsum("bdhw,kd->bkhw", raw, text), atol=1e-5)


def test_upsampled_logits_are_resized_to_the_original_size_before_any_softmax(tmp_path):
    """UPSAMPLE_LOGITS: "sem_seg" is the student's logits resized to the input's original size
    (mmseg's whole_inference resizes logits, its softmax comes last), so the argmax is the
    official one; without it the probabilities are resized, which moves class boundaries."""
    logits_model = build(tmp_path, "MODEL.MASKCLIP_PLUS.UPSAMPLE_LOGITS", "True").eval()
    probs_model = build(tmp_path).eval()
    assert logits_model.sem_seg_scores == "logits"
    assert probs_model.sem_seg_scores == "probabilities"
    names = ["sky", "grass", "tree"]
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    inp = {"image": image, "height": 71, "width": 93, "vocabulary": names}
    with torch.no_grad():
        out = logits_model([inp])[0]["sem_seg"]
        x = logits_model.normalize([image])[0][None]
        text = logits_model.text_embeddings(names)
        at_input = logits_model.logits(logits_model.pixel_embeddings(x), text, (48, 64))
        want = torch.nn.functional.interpolate(
            at_input, size=(71, 93), mode="bilinear", align_corners=False
        )[0]
        probs = probs_model([inp])[0]["sem_seg"]
    torch.testing.assert_close(out, want, rtol=0, atol=1e-4)
    # the same network: the probabilities are the softmax of the same logits at input size
    torch.testing.assert_close(
        probs_model.predict(x, text), at_input.softmax(dim=1), rtol=0, atol=1e-5
    )
    assert probs.shape == out.shape and not torch.allclose(probs, out.softmax(dim=0), atol=1e-4)


def test_loss_over_all_pixels_is_the_mean_over_every_pixel(tmp_path):
    dicts = write_unseen_fixture(tmp_path / "data", n=2)
    table = UNSEEN.index(ADE.names[TABLE])
    attached, store = store_of(tmp_path / "s", dicts, UNSEEN, lambda gt: np.full(gt.shape, table))
    samples = [zero_shot_train_mapper("none", store=store)(d) for d in attached]
    losses = {}
    for how in ("valid", "all"):
        model = build(tmp_path, *OFFICIAL, "MODEL.MASKCLIP_PLUS.LOSS_NORMALIZATION", how)
        model.eval()  # same BatchNorm statistics for both
        with EventStorage(0):
            losses[how] = model.losses(samples)["loss_sem_seg"]
    with torch.no_grad():
        images = torch.stack(model.normalize([s["image"] for s in samples]))
        logits = model.logits(
            model.pixel_embeddings(images), model.text_embeddings(ADE.names), images.shape[-2:]
        )
    targets = model.training_targets(samples, logits, iteration=0)
    per_pixel = F.cross_entropy(logits, targets, ignore_index=255, reduction="none")
    valid = targets != 255
    assert valid.any() and not valid.all()
    assert torch.allclose(losses["all"], per_pixel.mean(), rtol=1e-5)  # mmseg's mean
    assert torch.allclose(losses["valid"], per_pixel[valid].mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="LOSS_NORMALIZATION='pixels' is not one of"):
        build(tmp_path, loss_normalization="pixels")


# ---------------------------------------------------------------- teacher and background
def test_teacher_sees_the_crop_normalised_as_the_student(tmp_path):
    model = build(tmp_path)
    clip = model.teacher
    image = random_image(32, 48, seed=2)
    stats = (model.pixel_mean, model.pixel_std)
    recoloured = restandardized(image, stats, clip)
    seen_by_clip = (recoloured - clip.pixel_mean) / clip.pixel_std  # CLIP's own normalisation
    assert torch.allclose(seen_by_clip, (image.float() - stats[0]) / stats[1], atol=1e-4)

    seen = []
    labeller = model.labeller

    class Spy(torch.nn.Module):
        teacher = clip

        def forward(self, inputs):
            seen.append(inputs[0]["image"])
            return labeller(inputs)

    how = TeacherLabelling(Spy(), tuple(ADE.names), (GRASS, TABLE), 0.0, 255, stats)
    augmented_image_labels({"image": image}, how)
    assert torch.allclose(seen[0], recoloured)
    with pytest.raises(ValueError, match="only PSEUDO_LABEL_SOURCE 'online_augmented'"):
        build(tmp_path, teacher_input_normalization="student", pseudo_label_source="store")


def test_official_background_initialisation(tmp_path):
    opts = ("MODEL.OVSEG.BG_EMBED", "True", "MODEL.OVSEG.BACKGROUND_CLASS", "sky")
    ours = build(tmp_path, *opts).classifier.bg_embed.embedding
    official = build(tmp_path, *opts, "MODEL.MASKCLIP_PLUS.BG_EMBED_INIT_STD", "1.0")
    official = official.classifier.bg_embed.embedding
    assert ours.std() < 0.05 and 0.5 < official.std() < 2.0


# ---------------------------------------------------------------- heads
def _features():
    shapes = {"res2": ShapeSpec(channels=6, stride=4), "res5": ShapeSpec(channels=8, stride=8)}
    torch.manual_seed(0)
    return shapes, {"res2": torch.randn(2, 6, 16, 16), "res5": torch.randn(2, 8, 8, 8)}


def test_deeplabv2_without_output_projection_is_the_relu_branch_sum():
    shapes, feats = _features()
    head = DeepLabV2Head(
        shapes, in_feature="res5", out_channels=12, channels=12, dilations=(1, 2),
        norm="BN", output_projection=False,
    ).eval()  # fmt: skip
    out = head(feats)
    assert torch.equal(out, head.branches[0](feats["res5"]) + head.branches[1](feats["res5"]))
    assert out.shape == (2, 12, 8, 8) and (out >= 0).all()
    # the names official ASPPHeadV2 weights are converted onto
    names = set(head.state_dict())
    assert {"branches.0.weight", "branches.1.norm.weight", "branches.1.norm.running_var"} <= names
    assert not any(n.startswith("predictor") for n in names)
    with pytest.raises(ValueError, match=r"channels \(16\) is its output and must equal"):
        DeepLabV2Head(shapes, in_feature="res5", out_channels=12, output_projection=False,
                      channels=16)  # fmt: skip


def test_output_projection_false_from_config_takes_the_embedding_width():
    shapes, feats = _features()
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res5"]
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.MODEL.SEM_SEG_HEAD.OUTPUT_PROJECTION = False
    cfg.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS = 4
    v2 = DeepLabV2Head(cfg, shapes, out_channels=10)
    assert v2.predictor is None and v2(feats).shape == (2, 10, 8, 8)
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [2, 3, 4]
    cfg.MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS = [4]
    v3 = DeepLabV3PlusHead(cfg, shapes, out_channels=10)
    out = v3(feats)
    assert v3.predictor is None and out.shape == (2, 10, 16, 16) and (out >= 0).all()


def test_depthwise_separable_aspp_head_has_mmsegs_layers():
    """The official Context student's head (mmseg DepthwiseSeparableASPPHead with
    dilations (1, 12, 24, 36), c1 48 channels): layer for layer, and a forward re-derived
    from the official order (pool branch first, 3x3 bottleneck, [ASPP, c1] fused)."""
    shapes, feats = _features()
    head = DepthwiseSeparableASPPHead(
        shapes, in_feature="res5", out_channels=10, project_feature="res2", project_channels=4,
        channels=10, dilations=(1, 12, 24, 36), output_projection=False,
    ).eval()  # fmt: skip
    shapes_of = {k: tuple(v.shape) for k, v in head.state_dict().items() if "running" not in k}
    assert (
        shapes_of["image_pool.1.weight"] == (10, 8, 1, 1)
        and "image_pool.1.norm.weight" in shapes_of
    )
    assert shapes_of["branches.0.weight"] == (10, 8, 1, 1)
    assert shapes_of["branches.1.depthwise.weight"] == (8, 1, 3, 3)
    assert head.branches[3].depthwise.dilation == (36, 36)
    assert shapes_of["branches.1.pointwise.weight"] == (10, 8, 1, 1)
    assert shapes_of["bottleneck.weight"] == (10, 50, 3, 3)
    assert shapes_of["projection.weight"] == (4, 6, 1, 1)
    assert shapes_of["fusion.0.depthwise.weight"] == (14, 1, 3, 3)
    assert shapes_of["fusion.1.pointwise.weight"] == (10, 10, 1, 1)
    assert not any(k.endswith(".bias") and "norm" not in k for k in shapes_of)  # convs + norm
    x, c1 = feats["res5"], feats["res2"]
    pool = head.image_pool[1](x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, 8, 8)
    aspp = head.bottleneck(torch.cat([pool] + [b(x) for b in head.branches], 1))
    up = F.interpolate(aspp, size=(16, 16), mode="bilinear", align_corners=False)
    want = head.fusion(torch.cat([up, head.projection(c1)], 1))
    out = head(feats)
    assert out.shape == (2, 10, 16, 16) and torch.allclose(out, want, atol=1e-6)
    assert (out >= 0).all() and head.stride == 4


# ---------------------------------------------------------------- mmseg's resize
def test_ratio_range_resize_is_mmsegs():
    assert rescaled_size(375, 500, (520, 520)) == (390, 520)  # Context: long side 520 r
    assert rescaled_size(500, 375, (2048, 512)) == (683, 512)  # short side 512 r
    assert rescaled_size(100, 1000, (2048, 512)) == (205, 2048)  # long side capped
    aug = RatioRangeResize((520, 520), (0.5, 2.0))
    np.random.seed(0)
    longs = [aug.get_transform(np.zeros((375, 500, 3))).new_w for _ in range(200)]
    assert 260 <= min(longs) < 300 and 1000 < max(longs) <= 1040
    cfg = get_cfg()
    add_ovseg_config(cfg)
    assert type(training_resize(cfg)).__name__ == "ResizeShortestEdge"
    cfg.INPUT.RESIZE_IMG_SCALE = [2048, 512]
    assert isinstance(training_resize(cfg), RatioRangeResize)
    with pytest.raises(ValueError, match="RESIZE_RATIO_RANGE"):
        RatioRangeResize((520, 520), (2.0, 0.5))


# ---------------------------------------------------------------- the paper configs
PAPER = {
    "voc/maskclip_plus/maskclip_plus_rn50_r101_deeplabv2_transductive_20k_bs16.yaml": dict(
        clip="RN50", depth=101, free=False, start=1999, iters=20000, train="voc_sem_seg_train_aug",
        names="maskclip_voc20", head="DeepLabV2Head",
    ),
    "pcontext/maskclip_plus/maskclip_plus_rn50_r101_deeplabv3plus_transductive_40k_bs16.yaml": dict(
        clip="RN50", depth=101, free=False, start=3999, iters=40000,
        train="pcontext60_sem_seg_train", names="maskclip_pc59", head="DepthwiseSeparableASPPHead",
    ),
    "coco_stuff/maskclip_plus/maskclip_plus_rn50_r101_deeplabv2_transductive_80k_bs16.yaml": dict(
        clip="RN50", depth=101, free=False, start=7999, iters=80000,
        train="coco_2017_train_stuff_sem_seg", names="maskclip_coco171", head="DeepLabV2Head",
    ),
    "voc/maskclip_plus/maskclip_plus_vitb16_r50_deeplabv2_annofree_2k_bs16.yaml": dict(
        clip="ViT-B-16", depth=50, free=True, start=-1, iters=2000, train="voc_sem_seg_train_aug",
        names="maskclip_voc20", head="DeepLabV2Head",
    ),
    "pcontext/maskclip_plus/maskclip_plus_vitb16_r50_deeplabv2_annofree_4k_bs16.yaml": dict(
        clip="ViT-B-16", depth=50, free=True, start=-1, iters=4000, train="pcontext_sem_seg_train",
        names="maskclip_pc59", head="DeepLabV2Head",
    ),
    "coco_stuff/maskclip_plus/maskclip_plus_vitb16_r50_deeplabv2_annofree_8k_bs16.yaml": dict(
        clip="ViT-B-16", depth=50, free=True, start=-1, iters=8000,
        train="coco_2017_train_stuff_sem_seg", names="maskclip_coco171", head="DeepLabV2Head",
    ),
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(PAPER))
def test_paper_config_is_the_official_run(path):
    want = PAPER[path]
    cfg = load_config(str(CONFIGS / path))
    mc, ovseg, head = cfg.MODEL.MASKCLIP_PLUS, cfg.MODEL.OVSEG, cfg.MODEL.SEM_SEG_HEAD
    # teacher: the official CLIP, no refinement, in the loop on the augmented crop
    assert (cfg.MODEL.CLIP.MODEL_NAME, cfg.MODEL.CLIP.PRETRAINED) == (want["clip"], "openai")
    assert cfg.MODEL.CLIP.TEMPLATES == "maskclip85"
    assert cfg.MODEL.CLIP.PROMPT_NAMES == want["names"]
    assert not cfg.MODEL.MASKCLIP.PROMPT_DENOISE and not cfg.MODEL.MASKCLIP.KEY_SMOOTHING
    assert mc.PSEUDO_LABEL_SOURCE == "online_augmented"
    assert mc.TEACHER_INPUT_NORMALIZATION == "student"
    # pixels: the suppressed classes' ground truth, argmax, no threshold
    assert (mc.PSEUDO_LABEL_PIXELS, ovseg.ZERO_SHOT_SETTING) == ("unseen", "none")
    assert mc.PSEUDO_LABEL_THRESHOLD == 0.0 and mc.SELF_TRAINING_THRESHOLD == 0.0
    assert mc.ANNOTATION_FREE == want["free"]
    assert mc.PSEUDO_LABEL_CLASSES == ("all" if want["free"] else "unseen")
    # student: raw dot product of the un-projected head output; loss over every pixel
    assert not mc.NORMALIZE_EMBEDDINGS and ovseg.LOGIT_SCALE == 1.0
    assert not ovseg.LEARNABLE_LOGIT_SCALE and not head.OUTPUT_PROJECTION
    assert head.ASPP_DROPOUT == 0.0 and mc.DISTILL_WEIGHT == 0.0
    assert mc.LOSS_NORMALIZATION == "all"
    assert cfg.MODEL.DENSE_HEAD.NAME == want["head"]
    assert cfg.MODEL.RESNETS.DEPTH == want["depth"] and cfg.MODEL.RESNETS.STEM_TYPE == "deeplab"
    assert cfg.MODEL.RESNETS.NORM == head.NORM == "SyncBN"
    # schedule and recipe
    assert (ovseg.SELF_TRAINING.START_ITER, cfg.SOLVER.MAX_ITER) == (want["start"], want["iters"])
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MOMENTUM) == ("SGD", 16, 0.9)
    lr = cfg.SOLVER.BASE_LR
    assert lr * cfg.SOLVER.POLY_LR_CONSTANT_ENDING == pytest.approx(1e-4)  # min_lr
    decay = cfg.SOLVER.WEIGHT_DECAY
    assert decay == cfg.SOLVER.WEIGHT_DECAY_NORM == cfg.SOLVER.WEIGHT_DECAY_EMBED
    assert cfg.SOLVER.WARMUP_ITERS == 0 and cfg.TEST.INFERENCE_MODE == "whole"
    assert mc.UPSAMPLE_LOGITS  # logits resized to the original size, softmax last
    assert tuple(cfg.MODEL.PIXEL_MEAN) == (123.675, 116.28, 103.53)
    assert cfg.DATASETS.TRAIN == (want["train"],)
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 0.75 and cfg.INPUT.COLOR_AUG_SSD
    assert cfg.INPUT.COLOR_AUG_HUE_RANGE == "mmseg"  # numpy randint: [-18, 17]
    assert list(cfg.INPUT.RESIZE_RATIO_RANGE) == [0.5, 2.0]
    if path.startswith("pcontext"):  # img_scale (520, 520): long side 520 r / 520
        assert list(cfg.INPUT.RESIZE_IMG_SCALE) == [520, 520]
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (520, 520)
        assert tuple(cfg.INPUT.CROP.SIZE) == (480, 480)
    else:  # img_scale (2048, 512)
        assert list(cfg.INPUT.RESIZE_IMG_SCALE) == [2048, 512]
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (512, 2048)
        assert tuple(cfg.INPUT.CROP.SIZE) == (512, 512)


def test_context_paper_config_is_pc60_with_a_learnable_background():
    cfg = load_config(
        str(CONFIGS / "pcontext/maskclip_plus/"
            "maskclip_plus_rn50_r101_deeplabv3plus_transductive_40k_bs16.yaml")
    )  # fmt: skip
    assert cfg.DATASETS.TEST == ("pcontext60_sem_seg_val",)
    assert cfg.MODEL.OVSEG.BG_EMBED and cfg.MODEL.OVSEG.BACKGROUND_CLASS == "background"
    assert cfg.MODEL.MASKCLIP_PLUS.BG_EMBED_INIT_STD == 1.0
    head = cfg.MODEL.SEM_SEG_HEAD
    assert list(head.ASPP_DILATIONS) == [1, 12, 24, 36]
    assert list(head.PROJECT_FEATURES) == ["res2"] and list(head.PROJECT_CHANNELS) == [48]
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY) == (0.004, 0.0001)
    pc60 = Vocabulary.builtin("pc60")
    assert pc60.names[0] == "background" and len(pc60.names) == 60
    assert sorted(pc60.unseen) == sorted(Vocabulary.builtin("pc59").unseen)


@pytest.mark.parametrize("dataset", ["voc", "pcontext", "coco_stuff"])
def test_ovseg_variant_keeps_todays_recipe(dataset):
    path = next((CONFIGS / dataset / "maskclip_plus").glob("*transductive*_ovseg-variant.yaml"))
    cfg = load_config(str(path))
    mc, ovseg = cfg.MODEL.MASKCLIP_PLUS, cfg.MODEL.OVSEG
    assert cfg.MODEL.CLIP.MODEL_NAME == "ViT-B-16"
    assert cfg.MODEL.MASKCLIP.PROMPT_DENOISE and cfg.MODEL.MASKCLIP.KEY_SMOOTHING
    assert (mc.PSEUDO_LABEL_SOURCE, mc.PSEUDO_LABEL_PIXELS) == ("store", "ignore")
    assert ovseg.ZERO_SHOT_SETTING == "transductive" and cfg.DATASETS.PSEUDO_LABELS
    assert mc.NORMALIZE_EMBEDDINGS and ovseg.LOGIT_SCALE == pytest.approx(1 / 0.07)
    assert cfg.MODEL.SEM_SEG_HEAD.OUTPUT_PROJECTION and mc.LOSS_NORMALIZATION == "valid"
    assert mc.TEACHER_INPUT_NORMALIZATION == "clip" and not ovseg.BG_EMBED


OFFICIAL_NAMES = {  # tools/maskclip_utils/prompt_engineering.py:8-14, a few of each
    "maskclip_coco171": {"sky-other": "sky", "wall-concrete": "concrete wall", "cow": "cow"},
    "maskclip_ade150": {"window": "windowpane", "tv": "television receiver", "wall": "wall"},
    "maskclip_voc20": {"aeroplane": "airplane", "tv monitor": "tv monitor"},
    "maskclip_pc59": {"aeroplane": "airplane", "dining table": "table"},
}
CHANGED = {"maskclip_coco171": 29, "maskclip_ade150": 51, "maskclip_voc20": 1, "maskclip_pc59": 2}
VOCAB = {"maskclip_coco171": "coco171", "maskclip_ade150": "ade150", "maskclip_voc20": "voc20",
         "maskclip_pc59": "pc59"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(OFFICIAL_NAMES))
def test_official_prompt_names(name):
    names = Vocabulary.builtin(VOCAB[name]).names
    prompts = apply_prompt_names(names, get_prompt_names(name))  # no collision
    assert (
        sum(normalize_name(a) != normalize_name(b) for a, b in zip(names, prompts))
        == (CHANGED[name])
    )
    mapping = dict(zip(names, prompts))
    assert {k: mapping[k] for k in OFFICIAL_NAMES[name]} == OFFICIAL_NAMES[name]


@pytest.mark.parametrize("dataset", ["voc", "pcontext", "coco_stuff", "ade20k"])
def test_maskclip_configs_are_the_official_headline_runs(dataset):
    for clip in ("vitb16", "rn50"):
        cfg = load_config(str(CONFIGS / dataset / "maskclip" / f"maskclip_{clip}_bs1.yaml"))
        assert not cfg.MODEL.MASKCLIP.PROMPT_DENOISE and not cfg.MODEL.MASKCLIP.KEY_SMOOTHING
        assert cfg.MODEL.CLIP.PROMPT_NAMES.startswith("maskclip_")
        assert cfg.MODEL.CLIP.TEMPLATES == "maskclip85"


# ---------------------------------------------------------------- one official step
SMALL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.CLIP.PRETRAINED", "",
    "MODEL.CLIP.TEMPLATES", "single",
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16",
    "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", "[8]",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.RESIZE_IMG_SCALE", "[64, 64]",
    "INPUT.RESIZE_RATIO_RANGE", "[1.0, 1.0]",  # every crop 48 x 48
    "INPUT.CROP.SIZE", "(48, 48)",
    "INPUT.COLOR_AUG_SSD", "False",
]  # fmt: skip
PC60 = Vocabulary.builtin("pc60")


@pytest.fixture(scope="module")
def pc60_fixture(tmp_path_factory):
    """Two 64x64 PC-60-labelled images: background, an unseen class (aeroplane), a seen one
    (bus) and a void corner, registered as a training set with PC-60's metadata."""
    root = tmp_path_factory.mktemp("pc60")
    dicts = []
    for i in range(2):
        label = np.zeros((64, 64), np.uint8)  # background
        label[8 + i : 40, 10:40] = PC60.names.index("aeroplane")
        label[44:, :] = PC60.names.index("bus")
        label[:4, :4] = 255  # void
        code = label.astype(np.int64)
        image = np.stack([code * 3 % 256, code * 7 % 256, 255 - code], -1).astype(np.uint8)
        Image.fromarray(image).save(root / f"{i}.png")
        Image.fromarray(label).save(root / f"{i}_gt.png")
        dicts.append({"file_name": str(root / f"{i}.png"), "image_id": str(i),
                      "sem_seg_file_name": str(root / f"{i}_gt.png")})  # fmt: skip
    name = "maskclip_plus_recipe_pc60_train"
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(
        stuff_classes=list(PC60.names), unseen_classes=list(PC60.unseen), ignore_label=255
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize(
    "path",
    [
        "pcontext/maskclip_plus/maskclip_plus_rn50_r101_deeplabv3plus_transductive_40k_bs16.yaml",
        "pcontext/maskclip_plus/maskclip_plus_vitb16_r50_deeplabv2_annofree_4k_bs16.yaml",
    ],
)
def test_paper_config_trains_one_step_with_teacher_labels(path, pc60_fixture, tmp_path):
    """The official mechanisms end to end on a fixture: the teacher labels the augmented
    crop's unseen pixels (PC-60, learnable background) or every labelled pixel
    (annotation-free), the raw dot-product student learns from them."""
    cfg = load_config(str(CONFIGS / path))
    tiny = TINY_RN if cfg.MODEL.CLIP.MODEL_NAME == "RN50" else TINY_VIT
    opts = [*SMALL, "MODEL.CLIP.MODEL_NAME", str(tiny), "MODEL.CLIP.CACHE_DIR", str(tmp_path)]
    opts += ["DATASETS.TRAIN", f"('{pc60_fixture}',)", "DATASETS.TEST", "()"]
    cfg = load_config(str(CONFIGS / path), opts)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    batch = next(iter(Trainer.build_train_loader(cfg)))
    model.train()
    with EventStorage(0):
        names = model.input_vocabulary(batch[0], None)
        h, w = batch[0]["image"].shape[-2:]
        targets = model.training_targets(batch, torch.zeros(len(batch), len(names), h, w))
        losses = model(batch)
    gt = torch.stack([x["sem_seg"] for x in batch])
    if "annofree" in path:
        assert torch.equal(targets == 255, gt == 255)  # every labelled pixel labelled
    else:
        plane = PC60.names.index("aeroplane")
        unseen = gt == plane
        assert torch.equal(targets[~unseen], gt[~unseen])  # background, bus and void kept
        # unseen pixels: the teacher's argmax over the 10 unseen classes on the crop as the
        # student sees it (ImageNet statistics), no threshold
        scored = tuple(model.labelled_classes(names)[1])
        how = TeacherLabelling(
            model.labeller, names, scored, 0.0, 255, (model.pixel_mean, model.pixel_std)
        )
        teacher = torch.stack([augmented_image_labels(x, how) for x in batch])
        assert unseen.any() and torch.equal(targets[unseen], teacher[unseen])
        assert torch.isin(teacher, torch.tensor(scored)).all()
        assert model.classifier.bg_embed is not None
    loss = sum(losses.values())
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert model.head.predictor is None
