"""Overlays of small images are enlarged so names stay readable, never to a picture of
hundreds of megapixels: a thin strip's long side bounds the enlargement."""

import numpy as np
import pytest

from ovseg.utils.visualization import draw_semantic, overlay_scale, vocabulary_metadata

LONGEST = 4096  # ovseg.utils.visualization.MAX_OVERLAY_SIDE


@pytest.mark.parametrize(
    "height, width, scale",
    [(64, 64, 5), (64, 40, 8), (1, 1, 320), (320, 900, 1.0), (3, 500, 8), (3, 5000, 1)],
)
def test_short_side_reaches_the_minimum_unless_the_long_side_would_pass_the_limit(
    height, width, scale
):
    got = overlay_scale(height, width, 320)
    assert got == scale
    assert max(height, width) * got <= max(LONGEST, max(height, width))


def test_a_thin_strip_is_drawn_at_a_readable_size():
    strip = np.random.default_rng(0).integers(0, 256, (3, 5000, 3), dtype=np.uint8)
    label = np.zeros((3, 5000), np.uint8)
    label[:, 2500:] = 1
    overlay = draw_semantic(
        strip, label, vocabulary_metadata(["sky", "sea"]), scale=overlay_scale(3, 5000, 320)
    ).get_image()
    assert overlay.shape == (3, 5000, 3)  # was 321 x 535,000
    assert overlay_scale(3, 5000, 320, max_side=0) == 107  # no limit: the old enlargement
