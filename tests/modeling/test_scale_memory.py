"""Big vocabularies at full size: the score tensors that grow with K x H x W are held once.

ADE20K-847 is scored over 1,235 synonym words at 512 x 683 (ZegCLIP's leaf): each extra
full-size copy of the scores is 1.1-1.6 GB. Memory is counted as the peak of the bytes held
by live tensors (ovseg_testing/live_tensors.py: a dispatch mode with weak references), not
by timing or by the allocator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ovseg_testing.live_tensors import LiveTensorPeak, live_peak
from ovseg_testing.models import tiny_zegclip

from ovseg.modeling.inference import semantic_inference
from ovseg.modeling.vocabulary_scores import max_over_synonyms

K, SIZE, WINDOW, STRIDE = 256, 192, 64, 48
SLIDE = dict(mode="slide", window=(WINDOW, WINDOW), stride=(STRIDE, STRIDE))


def _low_res(x):
    """(b, K, h/8, w/8) scores: the model's logits, upsampled by the caller."""
    g = torch.Generator().manual_seed(x.shape[-1])
    return torch.randn(x.shape[0], K, x.shape[2] // 8, x.shape[3] // 8, generator=g)


def test_sliding_window_scores_are_divided_in_place():
    images = torch.zeros(1, 3, SIZE, SIZE)
    out, peak = live_peak(semantic_inference, _low_res, images, **SLIDE)
    canvas = out.numel() * out.element_size()
    # one canvas plus a few windows; `scores / count` made a second canvas (2.19 x)
    assert peak < 1.5 * canvas, peak / canvas


def test_each_window_is_freed_before_the_next_forward():
    images = torch.zeros(1, 3, SIZE, SIZE)
    window_bytes = K * WINDOW * WINDOW * 4
    canvas = K * SIZE * SIZE * 4
    held = []

    def predict(x):
        held.append(mode.live)  # what is alive when this window's forward starts
        return _low_res(x)

    with LiveTensorPeak() as mode:
        semantic_inference(predict, images, **SLIDE)
    assert len(held) == 16
    # from the second window on: the canvas, the counts and a crop; not the last window's
    # (K, 64, 64) scores, which the loop kept alive through the next forward
    extra = [h - canvas for h in held[1:]]
    assert max(extra) < window_bytes / 2, [e / window_bytes for e in extra]


def test_stacked_windows_are_freed_before_the_next_forward_too():
    # TEST.SLIDE_WINDOWS_PER_FORWARD 4: 16 windows in 4 forwards, each holding its 4 windows'
    # scores while they are added, none of them into the next forward
    images = torch.zeros(1, 3, SIZE, SIZE)
    window_bytes = K * WINDOW * WINDOW * 4
    canvas = K * SIZE * SIZE * 4
    held = []

    def predict(x):
        held.append(mode.live)
        return _low_res(x)

    with LiveTensorPeak() as mode:
        semantic_inference(predict, images, **SLIDE, windows_per_forward=4)
    assert len(held) == 4
    extra = [h - canvas for h in held[1:]]
    assert max(extra) < window_bytes / 2, [e / window_bytes for e in extra]
    # at the peak: the canvas and one forward's 4 windows of scores (at the input size and
    # at 1/8 of it), not more
    assert mode.peak < canvas + 4.5 * window_bytes, (mode.peak - canvas) / window_bytes


def test_max_over_synonyms_builds_one_output():
    scores = torch.randn(1, 3 * K, 32, 32)
    members = [[3 * k, 3 * k + 1, 3 * k + 2] for k in range(K - 1)] + [[3 * K - 1]]
    out, peak = live_peak(max_over_synonyms, scores, members)
    expected = torch.stack([scores[:, m].amax(dim=1) for m in members], dim=1)
    assert torch.equal(out, expected)
    # the K maps and their stack held the (1, K, H, W) result twice (2.0 x)
    assert peak < 1.25 * out.numel() * out.element_size(), peak / (out.numel() * 4)


def test_zegclip_sigmoid_does_not_copy_the_window(tmp_path):
    model = tiny_zegclip(tmp_path).eval()
    text = F.normalize(torch.randn(K, model.teacher.embed_dim), dim=-1)
    images = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        out, peak = live_peak(model.predict, images, text)
    out_bytes = out.numel() * out.element_size()
    # the upsampled logits and their sigmoid were two (K, 64, 64) tensors (about 2 x)
    assert peak < 1.6 * out_bytes, peak / out_bytes
