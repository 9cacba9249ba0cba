"""ovseg.convert for ZegCLIP: a state dict with the official names and shapes (from the
re-derived official modules, random weights, CLIP's shared with the tiny teacher) converts
into the paper config's model with every tensor accounted for; unknown, missing or misshapen
keys are refused by name; the converted model computes what the official one does: decoder,
one window, and the sliding-window test."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from convert_utils import TINY_VIT, ZEGCLIP_CONFIG, build, clip_json, tiny_opts
from official_zegclip import official_zegclip_like

from ovseg.convert import ConversionError, convert_checkpoint
from ovseg.modeling.meta_arch.zegclip import calibrate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# one window is the whole 64-pixel input of the tiny CLIP (patch 16: a 4x4 grid)
SMALL = ["INPUT.SIZE_DIVISIBILITY", "64", "TEST.SLIDE_WINDOW", "(64, 64)",
         "TEST.SLIDE_STRIDE", "(32, 32)"]  # fmt: skip
IMAGENET = (torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375]))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("clip_cache")


@pytest.fixture(scope="module")
def built(cache):
    """The VOC inductive paper config on the tiny CLIP: (cfg, model)."""
    return build(ZEGCLIP_CONFIG, tiny_opts(TINY_VIT, cache) + SMALL)


def official(model, resolution: int = 64, seed: int = 0):
    return official_zegclip_like(model, clip_json(TINY_VIT), input_resolution=resolution, seed=seed)


@pytest.fixture(scope="module")
def trained_at_128(built):
    """An official model trained on 128 crops: its positional embedding is CLIP's resized."""
    return official(built[1], 128).state_dict()


# ---------------------------------------------------------------- every tensor accounted for
def test_every_official_tensor_is_used_or_dropped_for_its_reason(trained_at_128):
    state = trained_at_128
    out, report = convert_checkpoint("zegclip", state)
    assert set(report.used) | set(report.dropped) == set(state)
    assert not set(report.used) & set(report.dropped)
    prompts = torch.cat(
        [state["backbone.prompt_embeddings"], state["backbone.deep_prompt_embeddings"]]
    )
    assert torch.equal(out["backbone.prompts"], prompts) and prompts.shape == (3, 10, 64)
    layer = "decode_head.decoder_1.layers."
    assert (
        report.used[layer + "0.multihead_attn.q.weight"] == "decoder.layers.0.cross_attn.q.weight"
    )
    assert report.used[layer + "1.linear2.bias"] == "decoder.layers.1.linear2.bias"
    assert report.used[layer + "2.multihead_attn.k.bias"] == "decoder.layers.2.cross_attn.k.bias"
    assert report.used["decode_head.q_proj.weight"] == "decoder.q_proj.weight"
    for old, new in report.used.items():
        if new != "backbone.prompts":
            assert torch.equal(out[new], state[old]), old
    why = report.dropped
    for i in range(3):  # self-attention is never run in any layer
        assert "never used" in why[f"{layer}{i}.self_attn.in_proj_weight"]
        assert "never used" in why[f"{layer}{i}.norm1.weight"]
    for name in (
        "multihead_attn.v.weight",
        "multihead_attn.proj.bias",
        "linear1.weight",
        "norm3.bias",
    ):
        assert "feed nothing" in why[layer + "2." + name]
    assert "image tower" in why["backbone.transformer.resblocks.2.mlp.c_fc.weight"]
    assert "image tower" in why["backbone.positional_embedding"]
    assert "text tower" in why["text_encoder.token_embedding.weight"]
    assert "loss" in why["decode_head.loss_decode.criterion.empty_weight"]
    assert "not compared" in report.summary() and "not checked against a model" in report.summary()


def test_converts_into_the_paper_config_model_strictly(built, trained_at_128):
    cfg, model = built
    out, report = convert_checkpoint("zegclip", trained_at_128, cfg, model=model)
    assert report.checked_model and set(out) == set(model.state_dict())
    # every frozen CLIP tensor equals the teacher's (the positional embedding resized as the
    # official code resized it for its 128 crops)
    assert len(report.teacher) == 73 and all(c.diff == 0 for c in report.teacher)
    model.load_state_dict(out, strict=True)
    assert report.notes == []  # the paper config computes as the official model
    text = report.summary(1e-4)
    assert "148 official tensors: 44 used (40 renamed), 104 dropped" in text
    assert "73 of 73 dropped CLIP tensors equal MODEL.CLIP's" in text


# ---------------------------------------------------------------- refusals name the key
def test_unknown_and_unrepresentable_keys_are_refused_by_name(trained_at_128):
    for extra, words in (
        ("decode_head.extra.weight", "unexpected"),
        ("decode_head.input_proj_1.weight", "use_proj"),
        ("decode_head.decoder_2.layers.0.linear1.weight", "use_stages"),
    ):
        state = {**trained_at_128, extra: torch.zeros(2)}
        with pytest.raises(ConversionError, match=rf"{extra}.*{words}"):
            convert_checkpoint("zegclip", state)


def test_missing_or_misshapen_keys_are_refused_by_name(built, trained_at_128):
    cfg, model = built
    state = dict(trained_at_128)
    del state["decode_head.q_proj.weight"]
    with pytest.raises(ConversionError, match=r"decode_head\.q_proj\.weight"):
        convert_checkpoint("zegclip", state)
    state = dict(trained_at_128)
    del state["decode_head.decoder_1.layers.1.linear1.weight"]
    with pytest.raises(ConversionError, match=r"missing .*decoder\.layers\.1\.linear1\.weight"):
        convert_checkpoint("zegclip", state, cfg, model=model)
    state = dict(trained_at_128)
    for key in ("backbone.prompt_embeddings", "backbone.deep_prompt_embeddings"):
        state[key] = state[key][:, :5]  # 5 prompt tokens, the config has 10
    with pytest.raises(ConversionError, match=r"shape differs: backbone\.prompts"):
        convert_checkpoint("zegclip", state, cfg, model=model)


def test_prompts_ovseg_cannot_place_are_refused(trained_at_128):
    state = dict(trained_at_128)
    del state["backbone.deep_prompt_embeddings"]  # shallow prompts (total_d_layer 0)
    with pytest.raises(ConversionError, match="deep_prompt_embeddings"):
        convert_checkpoint("zegclip", state)
    state = dict(trained_at_128)
    state["backbone.deep_prompt_embeddings"] = state["backbone.deep_prompt_embeddings"][:1]
    with pytest.raises(ConversionError, match="deep prompts for 1 of the 2 blocks"):
        convert_checkpoint("zegclip", state)


def test_clip_weights_unlike_the_teacher_are_refused_or_reported(built, trained_at_128):
    cfg, model = built
    state = dict(trained_at_128)
    key = "backbone.transformer.resblocks.1.ln_1.weight"
    state[key] = state[key] + 0.01
    with pytest.raises(ConversionError, match=rf"{key} vs visual\.transformer"):
        convert_checkpoint("zegclip", state, cfg, model=model)
    _, report = convert_checkpoint("zegclip", state, cfg, model=model, allow_teacher_mismatch=True)
    assert [c.official for c in report.teacher if not c.ok(1e-4)] == [key]
    assert f"differs: {key}" in report.summary(1e-4)


def test_settings_are_refused_or_noted(cache, trained_at_128):
    cfg, model = build(ZEGCLIP_CONFIG, tiny_opts(TINY_VIT, cache) + [
        "MODEL.ZEGCLIP.DECODER_SELF_ATTENTION", "True"])  # fmt: skip
    with pytest.raises(ConversionError, match="DECODER_SELF_ATTENTION must be False"):
        convert_checkpoint("zegclip", trained_at_128, cfg, model=model)
    cfg, model = build(ZEGCLIP_CONFIG, tiny_opts(TINY_VIT, cache) + [
        "MODEL.ZEGCLIP.DOUBLE_CLASS_EMBEDDING", "False",
        "MODEL.ZEGCLIP.POS_EMBED_INTERPOLATION", "bicubic",
        "MODEL.ZEGCLIP.PIXEL_STATISTICS", "clip"])  # fmt: skip
    _, report = convert_checkpoint("zegclip", trained_at_128, cfg, model=model)
    notes = " ".join(report.notes)
    for words in ("DOUBLE_CLASS_EMBEDDING", "POS_EMBED_INTERPOLATION", "PIXEL_STATISTICS"):
        assert words in notes
    assert "computes otherwise" in report.summary()
    with pytest.raises(ConversionError, match="META_ARCHITECTURE 'MaskCLIPPlus'"):
        convert_checkpoint("maskclip_plus", trained_at_128, cfg, model=model)


# ---------------------------------------------------------------- the same numbers
@pytest.fixture(scope="module")
def converted(built):
    """The paper config's model with an official model's weights (64 crops)."""
    cfg, model = built
    off = official(built[1], 64, seed=3)
    out, _ = convert_checkpoint("zegclip", off.state_dict(), cfg, model=model)
    model.load_state_dict(out, strict=True)
    return model, off


def _text(k: int = 20, seed: int = 0):
    return F.normalize(torch.randn(k, 32, generator=torch.Generator().manual_seed(seed)), dim=-1)


@torch.no_grad()
def test_decoder_computes_what_the_official_head_does(converted):
    model, off = converted
    x, text = torch.randn(2, 3, 64, 64), _text()
    feats = off.backbone(x)
    expected = off.decode_head([feats, text])  # sigmoid, seen classes - 0.1
    masks = model.decoder(feats[0][0], feats[1], text)[-1]
    masks = F.interpolate(masks, size=(64, 64), mode="bilinear", align_corners=False)
    seen = torch.tensor([i in off.decode_head.seen_idx for i in range(20)])
    torch.testing.assert_close(calibrate(masks.sigmoid(), seen, 0.1), expected, rtol=0, atol=1e-6)


@torch.no_grad()
def test_one_window_computes_what_the_official_model_does(converted):
    model, off = converted
    x, text = torch.randn(2, 3, 64, 64), _text(seed=1)
    seen = torch.tensor([i in off.decode_head.seen_idx for i in range(20)])
    expected = off.encode_decode(x, text)
    torch.testing.assert_close(model.predict(x, text, seen), expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_sliding_window_test_computes_what_the_official_test_does(converted):
    """The eval forward (train_net.py --eval-only) against the official slide_inference on the
    same image normalised with ImageNet's statistics, text = the model's classifier's."""
    model, off = converted
    assert len(off.decode_head.seen_idx) == 15  # VOC's seen classes, in the test vocabulary
    image = torch.randint(0, 256, (3, 96, 80), generator=torch.Generator().manual_seed(2))
    out = model([{"image": image, "height": 96, "width": 80}])[0]["sem_seg"]
    text = model.text_embeddings(model.vocabulary)
    mean, std = IMAGENET
    img = ((image.float() - mean.view(3, 1, 1)) / std.view(3, 1, 1))[None]
    expected = off.slide_inference(img, text, crop=64, stride=32)[0]
    assert out.shape == expected.shape == (20, 96, 80)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
