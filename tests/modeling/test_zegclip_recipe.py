"""ZegCLIP's official recipe (ZiqinZhou66/ZegCLIP @9ba4bb5): each switch for an official
behaviour does what it says on the tiny random CLIP ViT, the model's loss is the official
criterion's, and each paper config (configs/<dataset>/zegclip/) resolves to the official run's
settings while its *_ovseg-variant.yaml differs only in ovseg's choices."""

from __future__ import annotations

import hashlib
import os
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from fvcore.common.checkpoint import PeriodicCheckpointer
from ovseg_testing import CONFIGS, random_image, tiny_zegclip, two_region_batch

from detectron2.modeling import build_model

from ovseg.clip.dense import resize_pos_embed
from ovseg.clip.prompt_names import apply_prompt_names, get_prompt_names
from ovseg.clip.templates import get_templates
from ovseg.engine import solver
from ovseg.engine.defaults import load_config
from ovseg.modeling.meta_arch.zegclip import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD
from ovseg.vocab import resolve_vocabulary

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# get_embedding.ipynb:10-13, the names behind voc12_single.npy
OFFICIAL_VOC_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
# sha256 of get_embedding.ipynb:46-62 (`templates`, behind coco_multi.npy), joined by "\n"
OFFICIAL_MULTI_DIGEST = "cbde80760ccc7fcc1a88edb4de0d282c81c2264180d7b5140b84af9b7b6e5394"


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "clip_cache"


def _ln_pre_input(backbone, image: torch.Tensor) -> torch.Tensor:
    """The tokens the tower's ln_pre receives (class token first) for normalised images."""
    seen = []
    hook = backbone.tower.ln_pre.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        backbone.tokens(image)
    finally:
        hook.remove()
    return seen[0]


# ---------------------------------------------------------------- the switches
def test_doubled_class_embedding_adds_exactly_one_more_class_embedding(cache):
    plain = tiny_zegclip(cache).backbone
    doubled = tiny_zegclip(cache, double_class_embedding=True).backbone
    x = torch.randn(2, 3, 64, 48)
    a, b = _ln_pre_input(plain, x), _ln_pre_input(doubled, x)
    cls = plain.tower.class_embedding
    torch.testing.assert_close(b[:, 0] - a[:, 0], cls.expand(2, -1), rtol=0, atol=1e-6)
    assert torch.equal(a[:, 1:], b[:, 1:])  # patch tokens untouched
    # the official order: the token is cls, its position pos0 + cls (img_encoder.py:228, 231)
    pos0 = plain.tower.positional_embedding[0]
    assert torch.equal(b[0, 0], cls + (pos0 + cls))
    assert not torch.equal(plain(x)["global_token"], doubled(x)["global_token"])


def test_positional_embedding_interpolation_bilinear_or_bicubic(cache):
    bicubic = tiny_zegclip(cache).backbone
    bilinear = tiny_zegclip(cache, pos_embed_interpolation="bilinear").backbone
    tower = bicubic.tower
    x = torch.randn(1, 3, 80, 48)  # a 5x3 grid: the tower's positions are resized
    pos = tower.positional_embedding
    (gh, gw) = tower.grid_size
    grid = pos[1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    for backbone, mode in ((bicubic, "bicubic"), (bilinear, "bilinear")):
        want = F.interpolate(grid, size=(5, 3), mode=mode, align_corners=False)
        want = want.permute(0, 2, 3, 1).reshape(15, -1)
        patches = F.conv2d(x, tower.conv1.weight, stride=16).flatten(2).transpose(1, 2)
        torch.testing.assert_close(_ln_pre_input(backbone, x)[0, 1:], patches[0] + want)
    assert not torch.equal(bicubic(x)["patch_tokens"], bilinear(x)["patch_tokens"])
    # at the tower's own grid nothing is resized: both agree
    own = torch.randn(1, 3, gh * 16, gw * 16)
    assert torch.equal(bicubic(own)["patch_tokens"], bilinear(own)["patch_tokens"])
    with pytest.raises(ValueError, match=r"'nearest' is not one of \['bicubic', 'bilinear'\]"):
        resize_pos_embed(pos, (gh, gw), (5, 3), mode="nearest")
    with pytest.raises(ValueError, match="MODEL.ZEGCLIP.POS_EMBED_INTERPOLATION='area'"):
        tiny_zegclip(cache, pos_embed_interpolation="area")


def test_imagenet_or_clip_pixel_statistics(cache):
    clip = tiny_zegclip(cache)
    imagenet = tiny_zegclip(cache, pixel_statistics="imagenet")
    assert clip.pixel_mean.flatten().tolist() == clip.teacher.pixel_mean.flatten().tolist()
    assert clip.pixel_std.flatten().tolist() == clip.teacher.pixel_std.flatten().tolist()
    # mmseg's ImageNet statistics of the official pipeline (voc12_20_512x512.py:4-5)
    assert IMAGENET_PIXEL_MEAN == (123.675, 116.28, 103.53)
    assert IMAGENET_PIXEL_STD == (58.395, 57.12, 57.375)
    image = random_image(32, 32)
    (normalised,) = imagenet.normalize([image])
    mean = torch.tensor(IMAGENET_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_PIXEL_STD).view(3, 1, 1)
    torch.testing.assert_close(normalised, (image.float() - mean) / std)
    with pytest.raises(ValueError, match="MODEL.ZEGCLIP.PIXEL_STATISTICS='coco'"):
        tiny_zegclip(cache, pixel_statistics="coco")


def test_prompt_projection_bias_init(cache):
    zeros = tiny_zegclip(cache).backbone.prompt_proj
    uniform = tiny_zegclip(cache, prompt_proj_bias_init="uniform").backbone.prompt_proj
    width = zeros.weight.shape[1]
    assert torch.equal(zeros.bias, torch.zeros_like(zeros.bias))
    # nn.Linear's own U(-1/sqrt(width), 1/sqrt(width)), drawn before the weight's re-init
    assert uniform.bias.abs().max() <= width**-0.5 and uniform.bias.abs().min() > 0
    assert torch.equal(zeros.weight, uniform.weight)
    with pytest.raises(ValueError, match="MODEL.ZEGCLIP.PROMPT_PROJ_BIAS_INIT='ones'"):
        tiny_zegclip(cache, prompt_proj_bias_init="ones")


def _official_losses(logits: torch.Tensor, target: torch.Tensor, weight: float = 100.0):
    """criterion.py's loss_masks, re-derived: the target is 0 at ignored pixels (:156-166),
    focal is a mean over all pixels (:39-65), dice sums over all pixels (:21-36); both are
    summed over the image's present classes / every class and divided by the mask count."""
    b, k = logits.shape[:2]
    onehot = torch.zeros(b, k, *target.shape[1:])
    for i in range(b):
        for c in range(k):
            onehot[i, c] = (target[i] == c).float()
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = p * onehot + (1 - p) * (1 - onehot)
    focal = ce * (1 - p_t) ** 2 * (0.25 * onehot + 0.75 * (1 - onehot))
    present = [(i, c) for i in range(b) for c in range(k) if (target[i] == c).any()]
    num_masks = len(present)
    dice = 0.0
    for i, c in present:
        num = 2 * (p[i, c] * onehot[i, c]).sum()
        dice = dice + 1 - (num + 1) / (p[i, c].sum() + onehot[i, c].sum() + 1)
    return weight * focal.flatten(2).mean(2).sum() / num_masks, dice / num_masks


def test_model_loss_is_the_official_criterion_on_the_last_layer(cache):
    model = tiny_zegclip(cache, ignore_as_negative=True, deep_supervision=False).train()
    batch = two_region_batch()  # an ignored corner in each image
    assert (torch.stack([x["sem_seg"] for x in batch]) == 255).any()
    captured = []
    hook = model.decoder.register_forward_hook(lambda m, args, out: captured.append(out))
    losses = model(batch)
    hook.remove()
    # only the last decoder layer is supervised (decode_seg.py:289-300, criterion.py:216)
    assert set(losses) == {"loss_focal", "loss_dice"}
    last = F.interpolate(captured[0][-1], size=(32, 32), mode="bilinear", align_corners=False)
    target = torch.stack([x["sem_seg"] for x in batch])
    focal, dice = _official_losses(last.detach(), target)
    assert losses["loss_focal"].item() == pytest.approx(focal.item(), rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice.item(), rel=1e-5)
    # dropping the ignored pixels instead (ovseg's variant) gives another loss
    dropped = tiny_zegclip(cache, deep_supervision=False).train()(batch)
    assert dropped["loss_focal"].item() != pytest.approx(focal.item(), rel=1e-3)


# ---------------------------------------------------------------- the paper configs
PAPER = {  # config -> (dataset, official schedule, zero-shot stage)
    "voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml": ("voc", 20000, "inductive"),
    "voc/zegclip/zegclip_vitb16_transductive_10k_bs16.yaml": ("voc", 10000, "transductive"),
    "voc/zegclip/zegclip_vitb16_fully_20k_bs16.yaml": ("voc", 20000, "fully"),
    "coco_stuff/zegclip/zegclip_vitb16_inductive_80k_bs16.yaml": ("coco", 80000, "inductive"),
    "coco_stuff/zegclip/zegclip_vitb16_transductive_40k_bs16.yaml": (
        "coco", 40000, "transductive"
    ),
    "coco_stuff/zegclip/zegclip_vitb16_fully_80k_bs16.yaml": ("coco", 80000, "fully"),
    "pcontext/zegclip/zegclip_vitb16_inductive_40k_bs16.yaml": ("pc", 40000, "inductive"),
    "pcontext/zegclip/zegclip_vitb16_transductive_20k_bs16.yaml": ("pc", 20000, "transductive"),
}  # fmt: skip
VARIANT_KEYS = {
    "DEEP_SUPERVISION": True,
    "IGNORE_AS_NEGATIVE": False,
    "DOUBLE_CLASS_EMBEDDING": False,
    "POS_EMBED_INTERPOLATION": "bicubic",
    "PROMPT_PROJ_BIAS_INIT": "zeros",
    "PIXEL_STATISTICS": "clip",
}


def _load(rel: str):
    return load_config(str(CONFIGS / rel))


def _variant(rel: str) -> str:
    return rel[: -len(".yaml")] + "_ovseg-variant.yaml"


def _inductive_of(rel: str) -> str:
    """The paper inductive config of ``rel``'s dataset."""
    (found,) = [r for r, v in PAPER.items() if v[0] == PAPER[rel][0] and v[2] == "inductive"]
    return found


@pytest.mark.parametrize("rel", sorted(PAPER))
def test_paper_config_is_the_official_run(rel):
    dataset, max_iter, stage = PAPER[rel]
    cfg = _load(rel)
    z = cfg.MODEL.ZEGCLIP
    assert (cfg.MODEL.CLIP.MODEL_NAME, cfg.MODEL.CLIP.PRETRAINED) == ("ViT-B-16", "openai")
    assert z.NUM_PROMPTS == (10 if dataset == "voc" else 100) and z.PROMPT_DEPTH == "deep"
    assert (z.DECODER_LAYERS, z.DECODER_HEADS, z.FOCAL_WEIGHT, z.DICE_WEIGHT) == (3, 8, 100, 1)
    assert z.IGNORE_AS_NEGATIVE and not z.DEEP_SUPERVISION
    assert z.DOUBLE_CLASS_EMBEDDING and z.PIXEL_STATISTICS == "imagenet"
    assert z.POS_EMBED_INTERPOLATION == "bilinear" and z.PROMPT_PROJ_BIAS_INIT == "uniform"
    assert z.CALIBRATION == (0.1 if stage == "inductive" else 0.0)
    # data: mmseg's Resize((2048, 512), ratio 0.5-2), RandomCrop 512 (cat_max_ratio 0.75),
    # flip, photometric distortion; test at short side 512 (no long-side cap), slide 512/426
    assert list(cfg.INPUT.RESIZE_IMG_SCALE) == [2048, 512]
    assert list(cfg.INPUT.RESIZE_RATIO_RANGE) == [0.5, 2.0]
    assert tuple(cfg.INPUT.CROP.SIZE) == (512, 512) and cfg.INPUT.CROP.ENABLED
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 0.75 and cfg.INPUT.COLOR_AUG_SSD
    assert cfg.INPUT.COLOR_AUG_HUE_RANGE == "mmseg"  # numpy randint: [-18, 17]
    assert cfg.INPUT.MIN_SIZE_TEST == 512 and cfg.INPUT.MAX_SIZE_TEST >= 100000
    assert cfg.TEST.INFERENCE_MODE == "slide"
    assert (tuple(cfg.TEST.SLIDE_WINDOW), tuple(cfg.TEST.SLIDE_STRIDE)) == ((512, 512), (426,) * 2)
    # solver: AdamW, 2e-4 and decay 0.01 on every learnable parameter, poly 0.9 to 1e-6,
    # linear warm-up 1500 from 1e-6, batch 16
    s = cfg.SOLVER
    assert s.OPTIMIZER == "ADAMW" and s.IMS_PER_BATCH == 16 and s.MAX_ITER == max_iter
    assert s.BASE_LR * s.BACKBONE_MULTIPLIER == pytest.approx(2e-4)
    assert s.BASE_LR * s.LR_MULTIPLIER == pytest.approx(2e-4)
    assert s.WEIGHT_DECAY == s.WEIGHT_DECAY_NORM == s.WEIGHT_DECAY_EMBED == 0.01
    assert s.POLY_LR_POWER == 0.9 and 2e-4 * s.POLY_LR_CONSTANT_ENDING == pytest.approx(1e-6)
    assert (s.WARMUP_METHOD, s.WARMUP_ITERS, s.WARMUP_FACTOR) == ("linear", 1500, 1e-6)
    assert not s.CLIP_GRADIENTS.ENABLED and not s.AMP.ENABLED


@pytest.mark.parametrize("rel", sorted(PAPER))
def test_paper_config_text_is_the_official_text(rel):
    dataset = PAPER[rel][0]
    cfg = _load(rel)
    templates = get_templates(cfg.MODEL.CLIP.TEMPLATES)
    prompt_names = get_prompt_names(cfg.MODEL.CLIP.PROMPT_NAMES)
    if dataset == "voc":  # voc12_single.npy: "a photo of a {c}", no period, official names
        assert templates == ("a photo of a {}",)
        names = apply_prompt_names(resolve_vocabulary("voc20").names, prompt_names)
        assert names == OFFICIAL_VOC_NAMES
    else:  # coco_multi.npy: 15 templates averaged, COCO-Stuff's names as they are
        digest = hashlib.sha256("\n".join(templates).encode()).hexdigest()
        assert len(templates) == 15 and digest == OFFICIAL_MULTI_DIGEST
        assert prompt_names == {}


def test_voc_trains_on_train_plus_aug_and_tests_on_val():
    # voc12_20_aug_512x512.py:5-8: train.txt (1,464, VOC's labels) + mmseg's aug.txt (9,118
    # more SBD images) = the 10,582 of voc_sem_seg_train_aug
    cfg = _load("voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml")
    assert tuple(cfg.DATASETS.TRAIN) == ("voc_sem_seg_train_aug",)
    assert tuple(cfg.DATASETS.TEST) == ("voc_sem_seg_val",)


@pytest.mark.parametrize("rel", [r for r in sorted(PAPER) if PAPER[r][2] == "transductive"])
def test_transductive_starts_from_the_halfway_inductive_checkpoint(rel):
    cfg = _load(rel)
    source = _load(_inductive_of(rel))
    half = source.SOLVER.MAX_ITER // 2
    # VOC 10k + 10k, COCO 40k + 40k (README.md:72-73 --load-from iter_10000 / iter_40000)
    assert cfg.SOLVER.MAX_ITER == half and half % source.SOLVER.CHECKPOINT_PERIOD == 0
    assert cfg.MODEL.WEIGHTS == os.path.join(source.OUTPUT_DIR, f"model_{half - 1:07d}.pth")
    assert cfg.MODEL.OVSEG.ZERO_SHOT_SETTING == "none"
    assert cfg.MODEL.OVSEG.SELF_TRAINING.START_ITER == 0
    assert cfg.MODEL.ZEGCLIP.SELF_TRAINING_PIXELS == "unseen"


def test_detectron2_names_the_halfway_checkpoint_after_iteration_index_9999():
    # mmcv's iter_10000.pth is saved after 10,000 iterations; detectron2's periodic checkpointer
    # saves the same state under the 0-based index of the iteration just run
    checkpointer = mock.MagicMock()
    periodic = PeriodicCheckpointer(checkpointer, period=2000, max_iter=20000)
    for iteration in range(9990, 10010):
        periodic.step(iteration)
    checkpointer.save.assert_called_once_with("model_0009999", iteration=9999)


@pytest.mark.parametrize("rel", [r for r in sorted(PAPER) if PAPER[r][2] != "fully"])
def test_ovseg_variant_differs_only_in_ovseg_choices(rel):
    paper, variant = _load(rel), _load(_variant(rel))
    for key, value in VARIANT_KEYS.items():
        assert variant.MODEL.ZEGCLIP[key] == value and paper.MODEL.ZEGCLIP[key] != value
    # the paper's poly as mmcv computes it, the variant's ovseg's
    assert (paper.SOLVER.POLY_FORMULA, variant.SOLVER.POLY_FORMULA) == ("mmcv", "ovseg")
    ignored = {"OUTPUT_DIR", "MODEL.WEIGHTS", "SOLVER.POLY_FORMULA"}
    ignored |= {f"MODEL.ZEGCLIP.{k}" for k in VARIANT_KEYS}

    def flat(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            elif prefix + key not in ignored:
                yield prefix + key, value

    assert dict(flat(paper)) == dict(flat(variant))
    assert variant.OUTPUT_DIR == paper.OUTPUT_DIR + "_ovseg-variant"
    if PAPER[rel][2] == "transductive":  # from the end of the full inductive variant run
        final = os.path.join(_load(_variant(_inductive_of(rel))).OUTPUT_DIR, "model_final.pth")
        assert variant.MODEL.WEIGHTS == final


def test_paper_solver_gives_every_parameter_2e4_decay_001_and_a_1e6_floor(tmp_path):
    cfg = _load("voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml")
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLIP.MODEL_NAME = str(CONFIGS / "clip" / "tiny_vit.json")
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.CLIP.CACHE_DIR = str(tmp_path)
    cfg.DATASETS.TRAIN = ()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = 100, 10
    model = build_model(cfg)
    optimizer = solver.build_optimizer(cfg, model)
    groups = optimizer.param_groups
    assert {(round(g["lr"], 10), g["weight_decay"]) for g in groups} == {(2e-4, 0.01)}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    scheduler = solver.build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(100):
        optimizer.step()
        scheduler.step()
        lrs.append(groups[0]["lr"])
    assert min(lrs) == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1e-6)
