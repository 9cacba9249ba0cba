"""MaskCLIP: refinements on hand-built inputs, the meta-architecture on a tiny random CLIP
(its shipped configs and train_net.py --eval-only: tests/test_configs.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import TINY_RN, TINY_VIT, random_image, tiny_clip_cfg

from ovseg.clip import build_clip_teacher
from ovseg.modeling.meta_arch.maskclip import (
    DROPPED_LOGIT,
    MaskCLIP,
    cosine_logits,
    key_smoothing,
    prompt_denoise,
    refine_scores,
)
from ovseg.modeling.test_time_aug import TestTimeAug

NAMES = ("cat", "dog", "grass")


@pytest.fixture(scope="module")
def vit_teacher(tmp_path_factory):
    torch.manual_seed(0)
    return build_clip_teacher(
        tiny_clip_cfg(TINY_VIT, cache_dir=tmp_path_factory.mktemp("clip_cache"))
    )


@pytest.fixture(scope="module")
def rn_teacher(tmp_path_factory):
    torch.manual_seed(0)
    return build_clip_teacher(
        tiny_clip_cfg(TINY_RN, cache_dir=tmp_path_factory.mktemp("clip_cache"))
    )


def _model(teacher, **kwargs):
    kwargs.setdefault("templates", ("a photo of a {}.", "a {}."))
    kwargs.setdefault("vocabulary", NAMES)
    return MaskCLIP(teacher=teacher, **kwargs).eval()


# ---------------------------------------------------------------- pure refinements
def test_prompt_denoise_hand_computed():
    # softmax(100 * l): position 0 gives (3/4, 1/4, ~0), position 1 gives (1/5, 4/5, ~0)
    image0 = torch.tensor([[math.log(3) / 100, 0.0], [0.0, math.log(4) / 100], [-1.0, -1.0]])
    # a second image where class 2 is certain somewhere and class 0 nowhere above 1/2
    image1 = torch.tensor([[0.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])
    logits = torch.stack([image0, image1])[:, :, None, :]  # (2, 3, 1, 2)

    out = prompt_denoise(logits, threshold=0.78, logit_scale=100.0)
    # image 0: class max probabilities 0.75, 0.8, ~0 -> classes 0 and 2 dropped
    # image 1: position 0 gives (1/2, 1/2, ~0), position 1 gives (1/2, ~0, 1/2)
    #          -> max probabilities 0.5, 0.5, 0.5: all below 0.78, all dropped
    expected = logits.clone()
    expected[0, 0] = DROPPED_LOGIT
    expected[0, 2] = DROPPED_LOGIT
    expected[1] = DROPPED_LOGIT
    assert torch.equal(out, expected)
    # threshold 0.4 keeps every class of image 1 and drops only class 2 of image 0
    out = prompt_denoise(logits, threshold=0.4, logit_scale=100.0)
    assert torch.equal(out[1], logits[1])
    assert torch.equal(out[0, :2], logits[0, :2]) and bool((out[0, 2] == DROPPED_LOGIT).all())
    assert torch.equal(logits, torch.stack([image0, image1])[:, :, None, :])  # not in place


def _ks_inputs():
    # 3 locations in a row, 2 classes, 2 key channels
    probs = torch.tensor([[0.9, 0.3, 0.6], [0.1, 0.7, 0.4]])[None, :, None, :]  # (1, 2, 1, 3)
    keys = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])[None, :, None, :]  # (1, 2, 1, 3)
    return probs, keys


def test_key_smoothing_cosine_affinity_hand_computed():
    probs, keys = _ks_inputs()
    # unit keys (1,0), (1,0), (0,1): A = [[1,1,0],[1,1,0],[0,0,1]]
    # threshold 0.8: location 0 (max 0.9) kept; 1 -> p0 + p1 = (1.2, 0.8); 2 -> p2
    out = key_smoothing(probs, keys, threshold=0.8, normalization="channels")
    expected = torch.tensor([[0.9, 1.2, 0.6], [0.1, 0.8, 0.4]])[None, :, None, :]
    assert torch.allclose(out, expected, atol=1e-6)


def test_key_smoothing_keeps_a_certain_location_at_threshold_one():
    # official maskclip_head.py:148 smooths where max < threshold: a probability that
    # saturates to exactly 1.0 is kept at threshold 1.0
    probs = torch.tensor([[[[1.0, 0.6]], [[0.0, 0.4]]]])  # (1, 2, 1, 2)
    keys = torch.tensor([[[[1.0, 2.0]], [[0.5, -1.0]], [[2.0, 0.3]]]])
    out = key_smoothing(probs, keys, threshold=1.0)
    assert torch.equal(out[..., 0], probs[..., 0])
    assert not torch.allclose(out[..., 1], probs[..., 1])


def test_key_smoothing_official_position_normalisation_hand_computed():
    probs, keys = _ks_inputs()
    # each channel normalised over the locations: column 0 (2,1,0)/sqrt(5), column 1 (0,0,1)
    # A = [[4/5, 2/5, 0], [2/5, 1/5, 0], [0, 0, 1]]
    # threshold 1.0 smooths every location (none is certain)
    out = key_smoothing(probs, keys, threshold=1.0, normalization="positions")
    p0, p1, p2 = torch.tensor([0.9, 0.1]), torch.tensor([0.3, 0.7]), torch.tensor([0.6, 0.4])
    expected = torch.stack([0.8 * p0 + 0.4 * p1, 0.4 * p0 + 0.2 * p1, p2], dim=1)[None, :, None]
    assert torch.allclose(out, expected, atol=1e-6)
    # a threshold of 0 smooths nothing
    assert torch.equal(key_smoothing(probs, keys, threshold=0.0), probs)


def test_key_smoothing_equals_explicit_affinity_on_random_input():
    g = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(2, 5, 3, 4, generator=g) * 3, dim=1)
    keys = torch.randn(2, 7, 3, 4, generator=g)
    for norm, dim in (("positions", 1), ("channels", 2)):
        k = F.normalize(keys.flatten(2).transpose(1, 2), dim=dim)  # (B, N, C)
        p = probs.flatten(2).transpose(1, 2)  # (B, N, K)
        smoothed = (k @ k.transpose(1, 2)) @ p
        low = p.amax(dim=2, keepdim=True) < 0.7
        expected = torch.where(low, smoothed, p).transpose(1, 2).reshape(probs.shape)
        out = key_smoothing(probs, keys, threshold=0.7, normalization=norm)
        assert torch.allclose(out, expected, atol=1e-5)


def test_refine_scores_order_and_errors():
    logits = torch.tensor([[0.2, 0.0], [0.0, 0.2]])[None, :, :, None]  # (1, 2, 2, 1)
    assert torch.allclose(refine_scores(logits), F.softmax(logits * 100, dim=1))
    with pytest.raises(ValueError, match="keys"):
        refine_scores(logits, key_smoothing_threshold=1.0)
    with pytest.raises(ValueError, match="normalization"):
        key_smoothing(logits, logits, normalization="rows")
    dense = F.normalize(torch.randn(1, 4, 2, 2), dim=1)
    text = F.normalize(torch.randn(3, 4), dim=1)
    expected = torch.einsum("bdhw,kd->bkhw", dense, text)
    assert torch.allclose(cosine_logits(dense * 5, text * 2), expected, atol=1e-6)


def test_cosines_and_smoothing_stay_float32_under_autocast():
    # the teacher's scores under a bf16 training step (MaskCLIP+'s online pseudo-labels)
    g = torch.Generator().manual_seed(0)
    dense, text = torch.randn(2, 16, 5, 6, generator=g), torch.randn(7, 16, generator=g)
    keys = torch.randn(2, 8, 5, 6, generator=g)
    want = cosine_logits(dense, text)
    want_smoothed = key_smoothing(F.softmax(100 * want, dim=1), keys)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cosine_logits(dense, text)
        smoothed = key_smoothing(F.softmax(100 * got, dim=1), keys)
    assert got.dtype == smoothed.dtype == torch.float32
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(smoothed, want_smoothed)


# ---------------------------------------------------------------- meta-architecture
def test_scores_match_teacher_and_padding_is_alignment_free(vit_teacher):
    model = _model(vit_teacher)
    text = model.text_embeddings(NAMES)
    image = random_image(64, 48).float()[None]
    dense = vit_teacher.dense_embeddings(image)  # (1, D, 4, 3)
    grid = F.softmax(100 * torch.einsum("bdhw,kd->bkhw", dense, text), dim=1)
    expected = F.interpolate(grid, size=(64, 48), mode="bilinear", align_corners=False)
    # network inputs are the images minus the pixel mean (zero padding = mean padding)
    assert torch.allclose(model.predict(image - vit_teacher.pixel_mean, text), expected, atol=1e-5)

    # an image that is not a multiple of the patch scores like its mean-padded canvas, cropped
    refined = _model(vit_teacher, prompt_denoise=True, key_smoothing=True)
    small = random_image(37, 45, seed=1).float()[None]
    canvas = vit_teacher.pixel_mean.expand(1, 3, 48, 48).clone()
    canvas[:, :, :37, :45] = small
    mean = vit_teacher.pixel_mean
    crop = refined.predict(canvas - mean, text)[:, :, :37, :45]
    assert torch.allclose(refined.predict(small - mean, text), crop, atol=1e-5)


def test_upsampled_logits_are_the_official_heads_cosines_resized(vit_teacher):
    """UPSAMPLE_LOGITS: "sem_seg" is logit_scale x cosine upsampled (the official head's
    output before mmseg's softmax); the argmax then differs from resized probabilities'."""
    model = _model(vit_teacher, upsample_logits=True)
    assert model.sem_seg_scores == "logits" and MaskCLIP.sem_seg_scores == "probabilities"
    text = model.text_embeddings(NAMES)
    image = random_image(64, 48).float()[None]
    cos = torch.einsum("bdhw,kd->bkhw", vit_teacher.dense_embeddings(image), text)
    up = F.interpolate(100 * cos, size=(64, 48), mode="bilinear", align_corners=False)
    mean = vit_teacher.pixel_mean
    assert torch.allclose(model.predict(image - mean, text), up, atol=1e-4)
    probs = _model(vit_teacher).predict(image - mean, text)
    differ = (probs.argmax(1) != up.argmax(1)).sum()
    assert 0 < differ < 64 * 48 // 4  # boundary pixels only
    # the eval output: logits at the original size, their argmax the resized logits'
    out = model([{"image": random_image(64, 48), "height": 32, "width": 24}])[0]["sem_seg"]
    assert out.shape == (3, 32, 24) and out.amax() > 1.0  # logits, not probabilities
    # prompt denoising drops classes in the logits; key smoothing gives probabilities
    peaks = F.softmax(100 * cos, dim=1).amax(dim=(2, 3))[0]  # each class's largest prob
    threshold = float(peaks.max())  # drops every class but the most confident one
    denoised = _model(vit_teacher, upsample_logits=True, prompt_denoise=True,
                      prompt_denoise_threshold=threshold).predict(image - mean, text)  # fmt: skip
    for k in range(len(NAMES)):
        if peaks[k] < threshold:
            assert torch.all(denoised[0, k] == 100 * DROPPED_LOGIT)
        else:
            assert torch.allclose(denoised[0, k], up[0, k], atol=1e-4)
    smoothed = _model(vit_teacher, upsample_logits=True, key_smoothing=True)
    assert smoothed.sem_seg_scores == "probabilities" and not smoothed.upsample_logits


def test_stretched_grid_is_resized_onto_the_input_as_mmseg(vit_teacher):
    """STRETCH_GRID: the (ceil(h / 16), ceil(w / 16)) grid of the corner-padded input resized
    onto the h x w input itself (encoder_decoder.py:77), or onto it padded to
    INPUT.SIZE_DIVISIBILITY (a MaskCLIP+ crop padded to 512), then cropped."""
    text = _model(vit_teacher).text_embeddings(NAMES)
    image = random_image(37, 45, seed=2).float()[None]
    mean = vit_teacher.pixel_mean
    grid = F.softmax(100 * torch.einsum("bdhw,kd->bkhw", vit_teacher.dense_embeddings(image),
                                        text), dim=1)  # fmt: skip
    assert grid.shape[-2:] == (3, 3)
    stretched = _model(vit_teacher, stretch_grid=True).predict(image - mean, text)
    want = F.interpolate(grid, size=(37, 45), mode="bilinear", align_corners=False)
    assert torch.allclose(stretched, want, atol=1e-5)
    aligned = _model(vit_teacher).predict(image - mean, text)  # cells of 16 pixels, cropped
    assert not torch.allclose(aligned, stretched, atol=1e-3)
    # padded to 32 first: a 64 x 64 canvas of 4 x 4 cells, stretched over it, then cropped
    padded = _model(vit_teacher, stretch_grid=True, size_divisibility=32)
    canvas = mean.expand(1, 3, 64, 64).clone()
    canvas[:, :, :37, :45] = image
    grid = F.softmax(100 * torch.einsum("bdhw,kd->bkhw", vit_teacher.dense_embeddings(canvas),
                                        text), dim=1)  # fmt: skip
    want = F.interpolate(grid, size=(64, 64), mode="bilinear", align_corners=False)
    out = padded.predict(image - mean, text)
    assert torch.allclose(out, want[:, :, :37, :45], atol=1e-5)


def test_upsampled_logits_merge_over_flips_as_logits(vit_teacher):
    """TEST.AUG logit merging is accepted where the instance's "sem_seg" is logits
    (UPSAMPLE_LOGITS without key smoothing): the flipped views' logits are summed; where
    key smoothing makes them probabilities it is refused at build."""
    aug = TestTimeAug(scales=(1.0,), flip=True, merge="logits_sum")
    model = _model(vit_teacher, upsample_logits=True, stretch_grid=True, test_aug=aug)
    plain = _model(vit_teacher, upsample_logits=True, stretch_grid=True)
    assert model.sem_seg_scores == "logits" and model.has_logits()
    image = random_image(37, 45, seed=5)
    with torch.no_grad():
        out = model([{"image": image}])[0]["sem_seg"]
        one = plain([{"image": image}])[0]["sem_seg"]
        mirrored = plain([{"image": image.flip(-1)}])[0]["sem_seg"].flip(-1)
    torch.testing.assert_close(out, one + mirrored, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="merges logits, but MaskCLIP's scores are probabilities"):
        _model(vit_teacher, upsample_logits=True, key_smoothing=True, test_aug=aug)


def test_unpadded_resnet_grid_rounds_down_as_the_official_resnetclip(rn_teacher):
    """PAD_TO_STRIDE False: no padding, so the ResNet's stem and stride-2 average pools floor
    (MaskCLIP mmseg/models/backbones/resnet.py:163, :647; res_layer.py:50-52): 70 x 100 gives
    the grid 35 -> 17 -> 8 -> 4 -> 2 by 50 -> 25 -> 12 -> 6 -> 3, where padding to 32 gives
    3 x 4; that grid is resized onto the input (encoder_decoder.py:77)."""
    model = _model(rn_teacher, pad_to_stride=False, stretch_grid=True, upsample_logits=True)
    text = model.text_embeddings(NAMES)
    image = random_image(70, 100, seed=4).float()[None]
    dense = rn_teacher.dense_embeddings(image, pad=False)
    assert dense.shape[-2:] == (2, 3)
    assert rn_teacher.dense_embeddings(image).shape[-2:] == (3, 4)
    # the tower's own forward on the image as it is: no padding anywhere
    visual = rn_teacher.model.visual
    x = rn_teacher._normalize(image)
    feats = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))
    assert feats.shape[-2:] == (2, 3)
    logits = 100 * torch.einsum("bdhw,kd->bkhw", dense, text)
    want = F.interpolate(logits, size=(70, 100), mode="bilinear", align_corners=False)
    out = model.predict(image - rn_teacher.pixel_mean, text)
    assert out.shape[-2:] == (70, 100)
    assert torch.allclose(out, want, atol=1e-4)
    assert model.size_divisibility == 1
    padded = _model(rn_teacher, stretch_grid=True, upsample_logits=True)
    assert not torch.allclose(padded.predict(image - rn_teacher.pixel_mean, text), out, atol=1e-3)
    with pytest.raises(ValueError, match="PAD_TO_STRIDE False needs MODEL.MASKCLIP.STRETCH_GRID"):
        _model(rn_teacher, pad_to_stride=False)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_original_size_and_per_input_vocabulary(vit_teacher, mode):
    model = _model(
        vit_teacher,
        inference_mode=mode,
        slide_window=(32, 32),
        slide_stride=(16, 16),
        prompt_denoise=True,
        key_smoothing=True,
    )
    five = ["sky", "road", "car", "tree", "person"]
    inputs = [
        {"image": random_image(37, 45), "height": 50, "width": 61},
        {"image": random_image(29, 33, seed=2), "height": 29, "width": 33, "vocabulary": five},
        {"image": random_image(37, 45, seed=3)},  # no height/width: the input size
    ]
    with torch.no_grad():
        out = model(inputs)
    assert [tuple(o["sem_seg"].shape) for o in out] == [(3, 50, 61), (5, 29, 33), (3, 37, 45)]
    assert all(torch.isfinite(o["sem_seg"]).all() for o in out)


def test_slide_with_one_full_window_equals_whole(vit_teacher):
    inputs = [{"image": random_image(48, 64), "height": 48, "width": 64}]
    whole = _model(vit_teacher, key_smoothing=True, prompt_denoise=True)
    slide = _model(
        vit_teacher,
        inference_mode="slide",
        slide_window=(48, 64),
        slide_stride=(48, 64),
        key_smoothing=True,
        prompt_denoise=True,
    )
    with torch.no_grad():
        assert torch.allclose(whole(inputs)[0]["sem_seg"], slide(inputs)[0]["sem_seg"], atol=1e-6)


def test_resnet_tower_with_refinements(rn_teacher):
    model = _model(rn_teacher, prompt_denoise=True, key_smoothing=True, size_divisibility=64)
    with torch.no_grad():
        out = model([{"image": random_image(40, 70), "height": 40, "width": 70}])
    assert tuple(out[0]["sem_seg"].shape) == (3, 40, 70)
    assert model.size_divisibility == 64


def test_training_mode_refuses_and_nothing_is_checkpointed(vit_teacher):
    model = _model(vit_teacher)
    assert model.state_dict() == {}, "the frozen teacher must not be saved into checkpoints"
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.teacher.training
    with pytest.raises(RuntimeError, match="--eval-only"):
        model([{"image": random_image(32, 32)}])


def test_bad_inputs_are_named(vit_teacher):
    with pytest.raises(ValueError, match="'tiles'"):
        _model(vit_teacher, inference_mode="tiles")
    with pytest.raises(ValueError, match="1.5"):
        _model(vit_teacher, prompt_denoise_threshold=1.5)
    model = _model(vit_teacher, vocabulary=None)
    with pytest.raises(ValueError, match="no 'vocabulary'"):
        model([{"image": random_image(32, 32), "file_name": "x.jpg"}])
    with pytest.raises(ValueError, match="non-empty list"):
        model([{"image": random_image(32, 32), "vocabulary": "cat,dog"}])
    # one class twice (any case) would split its score (FreeSeg) or blame the names' length
    for dup in ("cat", " Cat"):
        with pytest.raises(ValueError, match=r"'x.jpg'.*uplicate class names.*'cat' at positions"):
            model(
                [{"image": random_image(32, 32), "vocabulary": [*NAMES, dup], "file_name": "x.jpg"}]
            )
