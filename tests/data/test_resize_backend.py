"""INPUT.RESIZE_BACKEND "opencv": mmcv's imresize pixels (cv2) in detectron2 transforms."""

import cv2
import numpy as np
import pytest

from detectron2.config import get_cfg
from detectron2.data import transforms as T

from ovseg import add_ovseg_config
from ovseg.data.dataset_mappers import OpenCVResizeTransform, inference_resize, training_resize
from ovseg.data.dataset_mappers.resize import BackendResize, RatioRangeResize


def _cfg(**input_keys):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    for key, value in input_keys.items():
        setattr(cfg.INPUT, key, value)
    return cfg


def test_labels_take_the_floor_source_pixel_not_the_nearest_centre():
    row = np.array([[10, 20, 30, 40]], dtype=np.uint8)
    # 4 -> 3 columns: OpenCV reads floor(x * 4 / 3) = 0, 1, 2; PIL the centres
    # (x + 0.5) * 4 / 3 = 0.67, 2, 3.33 -> 0, 2, 3
    assert OpenCVResizeTransform(1, 4, 1, 3).apply_segmentation(row).tolist() == [[10, 20, 30]]
    assert T.ResizeTransform(1, 4, 1, 3).apply_segmentation(row).tolist() == [[10, 30, 40]]
    # 2 -> 5 rows: floor(y * 2 / 5) = 0, 0, 0, 1, 1
    col = np.array([[1], [2]], dtype=np.uint8)
    assert OpenCVResizeTransform(2, 1, 5, 1).apply_segmentation(col)[:, 0].tolist() == [
        1, 1, 1, 2, 2,
    ]  # fmt: skip


def test_labels_are_cv2_nearest_for_any_size_and_dtype():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        nh, nw = (int(v) for v in rng.integers(1, 180, 2))
        label = rng.integers(0, 256, (h, w)).astype(np.uint8)
        want = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
        tfm = OpenCVResizeTransform(h, w, nh, nw)
        assert np.array_equal(tfm.apply_segmentation(label), want)
        # wide labels (which cv2 refuses) move the same way
        wide = label.astype(np.int64) * 1000
        assert np.array_equal(tfm.apply_segmentation(wide), want.astype(np.int64) * 1000)


def test_images_are_not_antialiased_when_shrinking():
    # a one-pixel checkerboard halved: OpenCV's bilinear samples between two pixels and
    # averages them (127 or 128); PIL's antialiased filter averages more than two
    board = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)
    image = np.repeat(board[..., None], 3, axis=2)
    out = OpenCVResizeTransform(16, 16, 8, 8).apply_image(image)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.array_equal(out, cv2.resize(image, (8, 8), interpolation=cv2.INTER_LINEAR))
    pil = T.ResizeTransform(16, 16, 8, 8).apply_image(image)
    assert not np.array_equal(out, pil)
    # one channel stays a channel axis; a float image keeps its dtype
    assert OpenCVResizeTransform(16, 16, 8, 8).apply_image(image[..., :1]).shape == (8, 8, 1)
    assert OpenCVResizeTransform(16, 16, 8, 8).apply_image(image.astype(np.float32)).dtype == (
        np.float32
    )


def test_coordinates_and_inverse():
    tfm = OpenCVResizeTransform(10, 20, 30, 10)
    coords = tfm.apply_coords(np.array([[20.0, 10.0], [4.0, 2.0]]))
    assert coords.tolist() == [[10.0, 30.0], [2.0, 6.0]]
    back = tfm.inverse()
    assert (back.h, back.w, back.new_h, back.new_w) == (30, 10, 10, 20)
    assert back.apply_image(np.zeros((30, 10, 3), np.uint8)).shape == (10, 20, 3)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="is for 10x20 inputs"):
        OpenCVResizeTransform(10, 20, 5, 5).apply_image(np.zeros((20, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="not int32.*RESIZE_BACKEND 'pil'"):
        OpenCVResizeTransform(2, 2, 4, 4).apply_image(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match=r"RESIZE_BACKEND 'cv2' is not one of \['pil', 'opencv'\]"):
        training_resize(_cfg(RESIZE_BACKEND="cv2"))
    with pytest.raises(ValueError, match="RESIZE_BACKEND"):
        inference_resize(_cfg(RESIZE_BACKEND="PIL"))


def test_the_config_chooses_the_pixels_and_the_resize_the_size():
    image = np.zeros((375, 500, 3), np.uint8)
    assert type(training_resize(_cfg())).__name__ == "ResizeShortestEdge"  # PIL: as before
    aug = training_resize(_cfg(RESIZE_BACKEND="opencv", RESIZE_IMG_SCALE=[2048, 512]))
    assert isinstance(aug, BackendResize) and isinstance(aug.aug, RatioRangeResize)
    tfm = aug.get_transform(image)
    assert isinstance(tfm, OpenCVResizeTransform)
    assert 256 <= min(tfm.new_h, tfm.new_w) <= 1024
    test = inference_resize(_cfg(RESIZE_BACKEND="opencv", MIN_SIZE_TEST=512, MAX_SIZE_TEST=2048))
    tfm = test.get_transform(image)
    assert isinstance(tfm, OpenCVResizeTransform)
    assert (tfm.new_h, tfm.new_w) == (512, 683)  # mmcv's rescale_size of (2048, 512)
    # MIN_SIZE_TEST 0: no resize, whatever the backend
    none = inference_resize(_cfg(RESIZE_BACKEND="opencv", MIN_SIZE_TEST=0))
    assert isinstance(none.get_transform(image), T.NoOpTransform)


def test_lseg_ade20k_draws_the_long_side_as_the_encoding_loader():
    from ovseg_testing.paths import CONFIGS

    from ovseg.engine.defaults import load_config

    cfg = load_config(str(CONFIGS / "ade20k" / "lseg" / "lseg_vitl16_303k_bs16.yaml"), [])
    aug = training_resize(cfg)
    np.random.seed(0)
    sizes = [aug.get_transform(np.zeros((512, 683, 3), np.uint8)) for _ in range(400)]
    longs = np.array([t.new_w for t in sizes])
    # encoding/datasets/base.py:72-80: long side randint(260, 1040), short int(w L / h + 0.5)
    assert 260 <= longs.min() < 280 and 1020 < longs.max() <= 1040
    assert all(t.new_h == int(512 * t.new_w / 683 + 0.5) for t in sizes)
