"""ovseg.convert for MaskCLIP+: a state dict with the official names and shapes (the
re-derived mmseg ResNetV1c + ASPPHeadV2 + MaskClipPlusHead, random weights; the head's frozen
CLIP named as the official weight converter names it) converts into the paper config's model
(a tiny ResNet-50 student) with every tensor accounted for; what ovseg cannot place is refused
by name; the converted model's test output equals the official whole-image test."""

from __future__ import annotations

import pytest
import torch
from convert_utils import (
    MASKCLIP_PLUS_CONFIG,
    ROOT,
    TINY_RN,
    TINY_VIT,
    build,
    randomise,
    tiny_opts,
)
from official_maskclip_plus import OfficialMaskCLIPPlus, clip_state

from ovseg.convert import ConversionError, convert_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a ResNet-50 8 channels wide (res5: 256), BN instead of SyncBN; the paper's output stride 8
# unless STRIDE_32 (mmseg strides (1, 2, 2, 2), no dilation)
STUDENT = [
    "MODEL.RESNETS.DEPTH", "50",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.NORM", "BN",
    "INPUT.SIZE_DIVISIBILITY", "-1",
]  # fmt: skip
STRIDE_32 = ["MODEL.RESNETS.RES4_DILATION", "1", "MODEL.RESNETS.RES5_DILATION", "1"]
BACKBONE_32 = dict(stem_channels=8, base_channels=8, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1))
BACKBONE_8 = dict(stem_channels=8, base_channels=8)  # mmseg's d8: dilations (1, 1, 2, 4)
MASKCLIP_PLUS = ROOT / "configs" / "voc" / "maskclip_plus"
ANNO_FREE = MASKCLIP_PLUS / "maskclip_plus_vitb16_r50_deeplabv2_annofree_2k_bs16.yaml"
CONTEXT = (
    ROOT / "configs" / "pcontext" / "maskclip_plus"
    / "maskclip_plus_rn50_r101_deeplabv3plus_transductive_40k_bs16.yaml"
)  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("clip_cache")


def small(cache, opts=()):
    """The VOC zero-shot paper config (RN50 teacher) on the tiny RN CLIP, stride 32."""
    return build(MASKCLIP_PLUS_CONFIG, tiny_opts(TINY_RN, cache) + STUDENT + STRIDE_32 + list(opts))


@pytest.fixture(scope="module")
def built(cache):
    return small(cache)


def official(model, backbone=BACKBONE_32, cls_bg=False, seed=1, vit=False, v3plus=False):
    """An official model shaped like ``model``: its text classifier the model's own text
    embeddings of its vocabulary (background first with ``cls_bg``), its frozen CLIP the
    model's teacher."""
    names = list(model.vocabulary)
    fg = names[1:] if cls_bg else names
    off = OfficialMaskCLIPPlus(
        backbone=backbone, text_categories=len(fg), text_channels=model.teacher.embed_dim,
        cls_bg=cls_bg, v3plus=v3plus,
    )  # fmt: skip
    randomise(off, seed)
    with torch.no_grad():
        off.decode_head.text_embeddings.copy_(model.text_embeddings(fg))
    state = {**off.state_dict(), **clip_state(model.teacher.model.state_dict(), vit=vit)}
    return off.eval(), state


# ---------------------------------------------------------------- every tensor accounted for
def test_every_official_tensor_is_used_or_dropped_for_its_reason(built):
    _, state = official(built[1])
    out, report = convert_checkpoint("maskclip_plus", state)
    assert set(report.used) | set(report.dropped) == set(state)
    used, why = report.used, report.dropped
    assert used["backbone.stem.0.weight"] == "backbone.stem.conv1.weight"
    assert used["backbone.stem.4.running_var"] == "backbone.stem.conv2.norm.running_var"
    assert used["backbone.stem.6.weight"] == "backbone.stem.conv3.weight"
    assert used["backbone.layer1.0.downsample.0.weight"] == "backbone.res2.0.shortcut.weight"
    assert used["backbone.layer3.5.bn3.bias"] == "backbone.res4.5.conv3.norm.bias"
    assert used["backbone.layer4.2.conv2.weight"] == "backbone.res5.2.conv2.weight"
    head = "decode_head.decode_module.aspp_modules.3."
    assert used[head + "conv.weight"] == "head.branches.3.weight"
    assert used[head + "bn.running_mean"] == "head.branches.3.norm.running_mean"
    for old, new in used.items():
        assert torch.equal(out[new], state[old]), old
    assert "text embeddings" in why["decode_head.text_embeddings"]
    assert "counter" in why["decode_head._iter_counter"]
    for key in ("decode_head.clip.stem.0.weight", "decode_head.clip.layer1.0.downsample.2.bias",
                "decode_head.c_proj.weight", "decode_head.q_proj.bias"):  # fmt: skip
        assert "teacher" in why[key]
    teacher_names = {c.official: c.teacher for c in report.pending}
    assert teacher_names["decode_head.clip.stem.4.weight"] == "visual.bn2.weight"
    assert teacher_names["decode_head.clip.layer2.0.downsample.1.weight"] == (
        "visual.layer2.0.downsample.0.weight"
    )
    assert teacher_names["decode_head.k_proj.weight"] == "visual.attnpool.k_proj.weight"


def test_converts_into_the_paper_config_model_strictly(built):
    cfg, model = built
    _, state = official(model)
    out, report = convert_checkpoint("maskclip_plus", state, cfg, model=model)
    assert report.checked_model and set(out) == set(model.state_dict())
    assert report.added == {}  # OUTPUT_PROJECTION False: the branches' sum is the output
    weights = [c for c in report.teacher if c.tol is None]
    assert len(weights) > 50 and all(c.ok(1e-6) for c in weights)
    text = [c for c in report.teacher if c.official == "decode_head.text_embeddings"]
    assert len(text) == 1 and text[0].ok(0.0)
    model.load_state_dict(out, strict=True)
    assert report.notes == []


def test_frozen_norms_drop_the_official_update_counters(cache):
    # a student with FrozenBN (detectron2's default) holds no num_batches_tracked: the
    # official BatchNorm counters are dropped, named, and the rest loads strictly
    cfg, model = small(cache, ["MODEL.RESNETS.NORM", "FrozenBN"])
    _, state = official(model)
    out, report = convert_checkpoint("maskclip_plus", state, cfg, model=model)
    model.load_state_dict(out, strict=True)
    why = report.dropped["backbone.layer1.0.bn1.num_batches_tracked"]
    assert why == "batch-norm update counter: the model's norm is frozen"
    assert not any(k.startswith("backbone.") and k.endswith("num_batches_tracked") for k in out)
    assert any(k.startswith("head.") and k.endswith("num_batches_tracked") for k in out)


# ---------------------------------------------------------------- the same numbers
def _compare(model, off, x) -> float:
    """Largest difference of the logits (and check the test's softmax agrees)."""
    text = model.text_embeddings(model.vocabulary)
    logits = model.logits(model.pixel_embeddings(x), text, tuple(x.shape[-2:]))
    expected = off.encode_decode(x)
    scores = model.predict(x, text)
    if model.sem_seg_scores == "logits":  # UPSAMPLE_LOGITS: the logits; mmseg's softmax last
        atol = 1e-5 * float(expected.abs().max())
        torch.testing.assert_close(scores, expected, rtol=0, atol=atol)
        scores = scores.softmax(dim=1)
    torch.testing.assert_close(scores, off.whole_inference(x), rtol=0, atol=1e-5)
    return float((logits - expected).abs().max() / expected.abs().max())


@torch.no_grad()
def test_test_output_is_the_official_whole_image_test(built):
    cfg, model = built
    off, state = official(model, seed=2)
    out, _ = convert_checkpoint("maskclip_plus", state, cfg, model=model)
    model.load_state_dict(out, strict=True)
    assert _compare(model, off, torch.randn(2, 3, 64, 96)) < 1e-5


@torch.no_grad()
def test_learnable_background_is_the_first_class(cache):
    cfg, model = small(cache, [
        "DATASETS.TRAIN", "()", "MODEL.OVSEG.TEST_VOCABULARY", "background,cat,dog",
        "MODEL.OVSEG.BG_EMBED", "True", "MODEL.OVSEG.BACKGROUND_CLASS", "background",
    ])  # fmt: skip
    off, state = official(model, cls_bg=True, seed=4)
    out, report = convert_checkpoint("maskclip_plus", state, cfg, model=model)
    assert report.used["decode_head.bg_embeddings"] == "classifier.bg_embed.embedding"
    model.load_state_dict(out, strict=True)
    assert _compare(model, off, torch.randn(1, 3, 64, 64)) < 1e-5


@torch.no_grad()
def test_context_deeplabv3plus_head_and_background(cache):
    """The Context zero-shot model: PC-60 (background first, learnable), DeepLabv3+."""
    opts = tiny_opts(TINY_RN, cache) + STUDENT + STRIDE_32
    cfg, model = build(CONTEXT, opts)
    off, state = official(model, cls_bg=True, v3plus=True, seed=5)
    out, report = convert_checkpoint("maskclip_plus", state, cfg, model=model)
    used = report.used
    module = "decode_head.decode_module."
    assert used[module + "image_pool.1.bn.weight"] == "head.image_pool.1.norm.weight"
    assert used[module + "aspp_modules.0.conv.weight"] == "head.branches.0.weight"
    assert used[module + "aspp_modules.2.depthwise_conv.conv.weight"] == (
        "head.branches.2.depthwise.weight"
    )
    assert used[module + "aspp_modules.3.pointwise_conv.bn.running_var"] == (
        "head.branches.3.pointwise.norm.running_var"
    )
    assert used[module + "bottleneck.conv.weight"] == "head.bottleneck.weight"
    assert used[module + "c1_bottleneck.bn.bias"] == "head.projection.norm.bias"
    assert used[module + "sep_bottleneck.1.depthwise_conv.bn.weight"] == (
        "head.fusion.1.depthwise.norm.weight"
    )
    assert set(report.used) | set(report.dropped) == set(state) and report.notes == []
    model.load_state_dict(out, strict=True)
    assert _compare(model, off, torch.randn(1, 3, 64, 96)) < 1e-5
    detectron2_v3plus = ["MODEL.DENSE_HEAD.NAME", "DeepLabV3PlusHead",
                         "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS", "[12, 24, 36]"]  # fmt: skip
    cfg, model = build(CONTEXT, opts + detectron2_v3plus)
    with pytest.raises(ConversionError, match="MODEL.DENSE_HEAD.NAME DepthwiseSeparableASPPHead"):
        convert_checkpoint("maskclip_plus", state, cfg, model=model)


@pytest.fixture(scope="module")
def built_d8(cache):
    """The paper's output stride 8 (res4 dilated 2, res5 4, CONTRACT_DILATION True)."""
    return build(MASKCLIP_PLUS_CONFIG, tiny_opts(TINY_RN, cache) + STUDENT)


@pytest.fixture(scope="module")
def built_d8_uncontracted(cache):
    """The same with every block of a dilated stage dilated alike."""
    opts = tiny_opts(TINY_RN, cache) + STUDENT + ["MODEL.RESNETS.CONTRACT_DILATION", "False"]
    return build(MASKCLIP_PLUS_CONFIG, opts)


@torch.no_grad()
def _d8_difference(built, contract_dilation: bool) -> tuple:
    """The relative difference of the logits against mmseg's ResNetV1c-d8 with or without
    ``contract_dilation``, and the conversion's notes."""
    cfg, model = built
    off, state = official(model, {**BACKBONE_8, "contract_dilation": contract_dilation})
    out, report = convert_checkpoint("maskclip_plus", state, cfg, model=model)
    model.load_state_dict(out, strict=True)
    return _compare(model, off, torch.randn(1, 3, 64, 64)), report.notes


def test_output_stride_8_is_the_official_resnetv1c_d8(built_d8):
    assert built_d8[0].MODEL.RESNETS.CONTRACT_DILATION
    difference, notes = _d8_difference(built_d8, contract_dilation=True)
    assert difference < 1e-5 and notes == []


def test_output_stride_8_differs_only_by_the_contracted_dilation(built_d8_uncontracted):
    # without CONTRACT_DILATION ovseg computes mmseg's contract_dilation=False network, not
    # the official one, and the conversion says so
    difference, notes = _d8_difference(built_d8_uncontracted, contract_dilation=False)
    assert difference < 1e-5
    assert any("CONTRACT_DILATION False" in n and "contract_dilation=True" in n for n in notes)
    cfg, model = built_d8_uncontracted
    off, state = official(model, {**BACKBONE_8, "contract_dilation": True})
    model.load_state_dict(convert_checkpoint("maskclip_plus", state, cfg, model=model)[0])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        text = model.text_embeddings(model.vocabulary)
        logits = model.logits(model.pixel_embeddings(x), text, tuple(x.shape[-2:]))
        expected = off.encode_decode(x)
    assert float((logits - expected).abs().max() / expected.abs().max()) > 1e-3


# ---------------------------------------------------------------- refusals name the key
def test_what_ovseg_cannot_place_is_refused_by_name(built):
    _, state = official(built[1])
    cases = {
        "decode_head.decode_module.conv_seg.weight": "neither ASPPHeadV2 nor",
        "backbone.layer1.0.downsample.2.weight": "ResNetV1d",
        "auxiliary_head.conv_seg.weight": "unexpected",
    }
    for key, words in cases.items():
        with pytest.raises(ConversionError, match=rf"{key}.*{words}"):
            convert_checkpoint("maskclip_plus", {**state, key: torch.zeros(1)})
    missing = {k: v for k, v in state.items() if not k.startswith("backbone.layer4.0.conv1")}
    with pytest.raises(ConversionError, match=r"backbone\.layer4\.0\.conv1\.weight"):
        convert_checkpoint("maskclip_plus", missing)


def test_model_misfits_are_refused_by_name(built, cache):
    cfg, model = built
    _, state = official(model, {**BACKBONE_32, "stem_channels": 16})
    with pytest.raises(ConversionError, match="STEM_OUT_CHANNELS 16"):
        convert_checkpoint("maskclip_plus", state, cfg, model=model)
    _, state = official(model)
    del state["backbone.layer2.1.bn2.running_mean"]
    with pytest.raises(ConversionError, match=r"missing .*res3\.1\.conv2\.norm\.running_mean"):
        convert_checkpoint("maskclip_plus", state, cfg, model=model)
    # a head with the 1x1 predictor gets the identity there (same output)
    cfg2, model2 = small(cache, [
        "MODEL.SEM_SEG_HEAD.OUTPUT_PROJECTION", "True", "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "48",
    ])  # fmt: skip
    out, report = convert_checkpoint("maskclip_plus", official(model2)[1], cfg2, model=model2)
    assert set(report.added) == {"head.predictor.weight", "head.predictor.bias"}
    assert torch.equal(out["head.predictor.weight"][:, :, 0, 0], torch.eye(48))


def test_teacher_and_text_unlike_the_config_are_refused_or_reported(built):
    cfg, model = built
    _, state = official(model)
    bad = {**state, "decode_head.c_proj.weight": state["decode_head.c_proj.weight"] * 1.01}
    with pytest.raises(ConversionError, match=r"decode_head\.c_proj\.weight vs visual\.attnpool"):
        convert_checkpoint("maskclip_plus", bad, cfg, model=model)
    text = torch.nn.functional.normalize(torch.randn_like(state["decode_head.text_embeddings"]))
    bad = {**state, "decode_head.text_embeddings": text}
    with pytest.raises(ConversionError, match="decode_head.text_embeddings vs MODEL.CLIP text"):
        convert_checkpoint("maskclip_plus", bad, cfg, model=model)
    _, report = convert_checkpoint(
        "maskclip_plus", bad, cfg, model=model, allow_teacher_mismatch=True
    )
    assert "lowest cosine" in report.summary() and "DIFFERS" in report.summary()
    _, report = convert_checkpoint("maskclip_plus", bad, cfg, model=model, text_check=False)
    assert all(c.official != "decode_head.text_embeddings" for c in report.teacher)


def test_settings_that_compute_otherwise_are_noted(cache):
    cfg, model = small(cache, [
        "MODEL.RESNETS.STRIDE_IN_1X1", "True", "MODEL.MASKCLIP_PLUS.NORMALIZE_EMBEDDINGS", "True",
    ])  # fmt: skip
    _, report = convert_checkpoint("maskclip_plus", official(model)[1], cfg, model=model)
    notes = " ".join(report.notes)
    assert "STRIDE_IN_1X1" in notes and "NORMALIZE_EMBEDDINGS" in notes


def test_vit_teacher_of_the_annotation_free_configs(cache):
    """The ViT-B/16 teacher's names (mmseg VisionTransformer, a 1x1 ``proj``) compared."""
    cfg, model = build(ANNO_FREE, tiny_opts(TINY_VIT, cache) + STUDENT + STRIDE_32)
    _, state = official(model, vit=True)
    assert "decode_head.clip.layers.0.attn.attn.in_proj_weight" in state
    assert "decode_head.proj.weight" in state
    out, report = convert_checkpoint("maskclip_plus", state, cfg, model=model)
    weights = [c for c in report.teacher if c.tol is None]
    assert len(weights) == sum(
        k.startswith(("decode_head.clip.", "decode_head.proj")) for k in state
    )
    assert all(c.ok(1e-6) for c in report.teacher)
    model.load_state_dict(out, strict=True)
