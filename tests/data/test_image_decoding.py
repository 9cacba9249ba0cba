"""The mmseg pipelines (ZegCLIP, MaskCLIP, MaskCLIP+) decode images with OpenCV (mmcv's
``imfrombytes``: ``cv2.imdecode`` with ``IMREAD_COLOR``); ovseg's mappers with detectron2's
``read_image`` (PIL). Both give the same pixels for the JPEG kinds of the benchmarks, EXIF
orientation applied by both, so no decoder switch is needed (docs/reproduction.md)."""

import cv2
import numpy as np
import pytest
from PIL import Image

from detectron2.data.detection_utils import read_image


def _opencv_rgb(path):
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


@pytest.mark.parametrize(
    "options",
    [
        {"quality": 95, "subsampling": 0},  # 4:4:4
        {"quality": 75, "subsampling": 2},  # 4:2:0, the common camera JPEG
        {"quality": 85, "subsampling": 1},  # 4:2:2
        {"quality": 90, "progressive": True},
    ],
)
def test_pil_and_opencv_decode_the_same_pixels(tmp_path, options):
    rng = np.random.default_rng(0)
    for k in range(4):
        h, w = (int(v) for v in rng.integers(17, 120, 2))
        smooth = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (w, h))
        image = np.clip(smooth + rng.integers(-30, 30, smooth.shape), 0, 255).astype(np.uint8)
        path = tmp_path / f"{k}.jpg"
        Image.fromarray(image).save(path, format="JPEG", **options)
        np.testing.assert_array_equal(read_image(str(path), format="RGB"), _opencv_rgb(path))


def test_greyscale_and_exif_orientation(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(image[:, :, 0]).save(grey, format="JPEG")
    np.testing.assert_array_equal(read_image(str(grey), format="RGB"), _opencv_rgb(grey))
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.jpg"
        Image.fromarray(image).save(path, format="JPEG", quality=95, exif=exif.tobytes())
        ours = read_image(str(path), format="RGB")
        assert ours.shape[:2] == ((50, 30) if orientation in (6, 8) else (30, 50))
        np.testing.assert_array_equal(ours, _opencv_rgb(path))
