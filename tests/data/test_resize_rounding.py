"""INPUT.RESIZE_ROUNDING "truncate": maskrcnn_benchmark's shortest-edge resize (XPM's)."""

import numpy as np
import pytest
from ovseg_testing import CONFIGS

from detectron2.config import get_cfg
from detectron2.data import transforms as T

from ovseg.config import add_ovseg_config
from ovseg.data.dataset_mappers import inference_resize, training_resize
from ovseg.data.dataset_mappers.resize import TruncatingShortestEdge


def _cfg(**input_keys):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (800,), 1333
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 800, 1333
    for key, value in input_keys.items():
        setattr(cfg.INPUT, key, value)
    return cfg


def _size(aug, h, w):
    tfm = aug.get_transform(np.zeros((h, w, 3), np.uint8))
    if isinstance(tfm, T.NoOpTransform):
        return h, w
    if not isinstance(tfm, T.ResizeTransform):  # BackendResize / NonEmptyResize wrappers
        tfm = tfm.transforms[0] if hasattr(tfm, "transforms") else tfm
    return tfm.new_h, tfm.new_w


# (h, w) -> maskrcnn_benchmark's Resize.get_size(800, 1333), worked by hand:
# 480x640: 800 x int(800 * 640 / 480) = int(1066.67); 426x640: int(1201.88);
# 100x2000: 2000 / 100 * 800 > 1333 -> short side round(1333 * 100 / 2000) = 67, long int(1340.0)
RELEASE = {(480, 640): (800, 1066), (640, 480): (1066, 800), (375, 500): (800, 1066),
           (426, 640): (800, 1201), (425, 640): (800, 1204), (100, 2000): (67, 1340),
           (800, 1000): (800, 1000)}  # fmt: skip


@pytest.mark.parametrize("resize", [training_resize, inference_resize])
def test_truncate_gives_the_release_sizes_and_round_detectron2s(resize):
    truncate = resize(_cfg(RESIZE_ROUNDING="truncate"))
    for (h, w), want in RELEASE.items():
        assert _size(truncate, h, w) == want, (h, w)
    # detectron2 rounds the long side: the common COCO 480x640 differs by one pixel
    assert _size(resize(_cfg()), 480, 640) == (800, 1067)


def test_the_xpm_leaves_resize_as_the_release():
    from ovseg.engine.defaults import load_config

    for leaf in ("xpm_teacher_bert_ovrcnn_90k_bs8", "xpm_student_bert_ovrcnn_70k_bs8"):
        cfg = load_config(str(CONFIGS / f"coco/xpm/{leaf}.yaml"), [])
        assert cfg.INPUT.RESIZE_ROUNDING == "truncate"
        assert _size(inference_resize(cfg), 480, 640) == (800, 1066)


def test_truncate_draws_among_its_sizes_and_refuses_a_range():
    aug = TruncatingShortestEdge([600, 800], 0)
    assert {aug.get_transform(np.zeros((480, 640, 3), np.uint8)).new_h for _ in range(40)} == {
        600,
        800,
    }
    with pytest.raises(ValueError, match="'truncate'.*'choice'"):
        training_resize(_cfg(RESIZE_ROUNDING="truncate", MIN_SIZE_TRAIN_SAMPLING="range"))
    with pytest.raises(ValueError, match="RESIZE_ROUNDING 'floor' is not one of"):
        inference_resize(_cfg(RESIZE_ROUNDING="floor"))
