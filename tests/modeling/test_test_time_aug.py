"""Multi-scale + flip test-time augmentation: sizes, flips, merges, and a model using it."""

import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import tiny_lseg_cfg

from detectron2.modeling import build_model

from ovseg.modeling.meta_arch.base import OpenVocabSegmentor
from ovseg.modeling.test_time_aug import TestTimeAug, aug_size, multiscale_inference


@pytest.fixture
def conv3():
    """A 3x3 conv 'model': not mirror-symmetric, so flipping changes its output."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 4, kernel_size=3, padding=1).double().requires_grad_(False)


def test_aug_size_rounds_as_the_official_evaluator():
    # long side ceil(520 * s); the other int(other * long / side + 0.5)
    assert aug_size(300, 400, 0.5, 520, "long") == (195, 260)
    assert aug_size(400, 300, 1.75, 520, "long") == (910, 683)
    assert aug_size(300, 400, 1.0, 0, "long") == (300, 400)
    assert aug_size(300, 400, 2.0, 100, "short") == (200, 267)


def _up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def test_matches_a_hand_made_reference(conv3):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 30, 40, dtype=torch.float64)
    aug = TestTimeAug(scales=(0.5, 1.25), base_size=40, flip=True, merge="logits_sum")
    want = 0
    for size in [(15, 20), (38, 50)]:
        x = _up(images, size)
        out = conv3(x) + conv3(x.flip(-1)).flip(-1)
        want = want + _up(out, (30, 40))
    got = multiscale_inference(conv3, images, aug)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # the same with a sliding window that covers each scale in several windows
    slide = multiscale_inference(conv3, images, aug, mode="slide", window=16, stride=8)
    assert slide.shape == (2, 4, 30, 40) and not torch.allclose(slide, got)


def test_summed_is_the_mean_times_the_views(conv3):
    images = torch.rand(1, 3, 24, 20, dtype=torch.float64)
    kw = dict(scales=(0.75, 1.0, 1.5), base_size=0, flip=True)
    total = multiscale_inference(conv3, images, TestTimeAug(merge="logits_sum", **kw))
    mean = multiscale_inference(conv3, images, TestTimeAug(merge="logits_mean", **kw))
    torch.testing.assert_close(total, mean * 6, rtol=0, atol=1e-10)


def test_flip_invariance_and_no_flip(conv3):
    images = torch.rand(1, 3, 16, 22, dtype=torch.float64)
    aug = TestTimeAug(scales=(1.0,), flip=True, merge="logits_mean")
    got = multiscale_inference(conv3, images, aug)
    mirrored = multiscale_inference(conv3, images.flip(-1), aug)
    # flip-averaged scores of a mirrored image are the mirrored scores
    torch.testing.assert_close(mirrored, got.flip(-1), rtol=0, atol=1e-10)
    plain = multiscale_inference(conv3, images, TestTimeAug(scales=(1.0,), flip=False))
    torch.testing.assert_close(plain, conv3(images), rtol=0, atol=0)
    assert not torch.allclose(plain, got)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scales=()), "SCALES"),
        (dict(scales=(0.5, -1.0)), "SCALES"),
        (dict(base_size=-1), "BASE_SIZE"),
        (dict(resize_side="width"), "RESIZE_SIDE"),
        (dict(merge="max"), "MERGE"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TestTimeAug(**kwargs)


class _ProbabilitiesOnly(OpenVocabSegmentor):
    sem_seg_scores = "probabilities"


def test_logit_merge_needs_a_logit_output():
    kw = dict(teacher=None, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)
    with pytest.raises(ValueError, match="scores_mean"):
        _ProbabilitiesOnly(test_aug=TestTimeAug(merge="logits_sum"), **kw)
    _ProbabilitiesOnly(test_aug=TestTimeAug(merge="scores_mean"), **kw)


def test_lseg_sums_logits_then_softmax(tmp_path):
    cfg = tiny_lseg_cfg(tmp_path)
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.SCALES = (0.5, 1.0)
    cfg.TEST.AUG.BASE_SIZE = 64
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    names = ("cat", "dog", "sky")
    image = torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "vocabulary": list(names)}])[0]["sem_seg"]
        x = model.normalize([image])[0][None]
        text = model.text_embeddings(names)
        want = 0
        for size in [(24, 32), (48, 64)]:
            xs = _up(x, size)
            logits = model.predict_logits(xs, text)
            logits = logits + model.predict_logits(xs.flip(-1), text).flip(-1)
            want = want + _up(logits, (48, 64))
    torch.testing.assert_close(out, want.softmax(dim=1)[0], rtol=0, atol=1e-5)
    assert model.test_aug.merge == "logits_sum"


def test_windows_per_forward_reaches_each_scale_and_keeps_the_scores(tmp_path):
    # TEST.SLIDE_WINDOWS_PER_FORWARD through the model and its multi-scale, flipped test:
    # the same scores from fewer, larger forwards of the network
    outs, forwards = {}, {}
    image = torch.randint(0, 255, (3, 48, 80), dtype=torch.uint8)
    for per_forward in (1, 4):
        cfg = tiny_lseg_cfg(tmp_path)
        cfg.TEST.AUG.ENABLED, cfg.TEST.AUG.SCALES, cfg.TEST.AUG.BASE_SIZE = True, (1.0,), 80
        cfg.TEST.INFERENCE_MODE = "slide"
        cfg.TEST.SLIDE_WINDOW, cfg.TEST.SLIDE_STRIDE = (32, 32), (24, 24)
        cfg.TEST.SLIDE_WINDOWS_PER_FORWARD = per_forward
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        assert model.slide_windows_per_forward == per_forward
        calls = forwards[per_forward] = []
        model.backbone.register_forward_pre_hook(
            lambda m, args, calls=calls: calls.append(args[0].shape[0])
        )
        with torch.no_grad():
            outs[per_forward] = model([{"image": image, "vocabulary": ["cat", "dog"]}])
    torch.testing.assert_close(outs[4][0]["sem_seg"], outs[1][0]["sem_seg"], rtol=1e-5, atol=1e-6)
    # 2 x 3 windows, each seen and flipped: 12 forwards of one crop, or 4 of up to 4
    assert forwards[1] == [1] * 12
    assert sorted(forwards[4]) == [2, 2, 4, 4]
