"""Every image decodes to the documented format (uint8 RGB) or fails naming its file."""

import numpy as np
import pytest
from ovseg_testing import eval_mapper
from PIL import Image

from ovseg.data.image_io import ImageDecodeError, read_image


def _dataset_dict(image_path, label=None, tmp_path=None):
    d = {"file_name": str(image_path)}
    if label is not None:
        label_path = tmp_path / "label.png"
        Image.fromarray(label).save(label_path)
        d["sem_seg_file_name"] = str(label_path)
    return d


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored as 16-bit

    out = eval_mapper(["a", "b"])(_dataset_dict(path))
    image = out["image"].numpy()  # (3, H, W) uint8
    assert image.dtype == np.uint8 and image.shape == (3, 48, 64)
    expected = np.rint(ramp / 257.0)
    assert np.abs(image[0].astype(int) - expected).max() <= 1
    assert (image == 255).mean() < 0.01  # detectron2's read_image: 99.6 % white
    assert np.array_equal(image[0], image[1]) and np.array_equal(image[1], image[2])


def test_float_grayscale_in_0_1_is_scaled_and_out_of_range_refused(tmp_path):
    # a 32-bit float TIFF (depth maps, scientific images) holds values in [0, 1]
    ramp = np.linspace(0, 1, 12 * 16, dtype=np.float32).reshape(12, 16)
    path = tmp_path / "float.tif"
    Image.fromarray(ramp, mode="F").save(path)
    assert Image.open(path).mode == "F"
    image = read_image(path, "RGB")
    assert image.dtype == np.uint8 and image.shape == (12, 16, 3)
    assert np.array_equal(image[..., 0], np.rint(ramp * 255).astype(np.uint8))
    Image.fromarray(ramp * 1.5, mode="F").save(path)
    with pytest.raises(ImageDecodeError, match=r"float.tif' is a float image with values outside"):
        read_image(path, "RGB")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK"])
def test_8bit_modes_decode_to_rgb(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / f"im_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.fromarray(rgb).convert(mode).save(path)
    image = read_image(path, "RGB")
    assert image.dtype == np.uint8 and image.shape == (20, 30, 3)
    assert np.array_equal(image, np.asarray(Image.open(path).convert("RGB")))


def test_truncated_image_fails_naming_the_file(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "truncated.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageDecodeError, match="truncated.jpg"):
        eval_mapper(["a", "b"])(_dataset_dict(path))


def test_truncated_label_fails_naming_the_file(tmp_path):
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    label = np.random.default_rng(0).integers(0, 2, (64, 64), dtype=np.uint8)
    d = _dataset_dict(image, label, tmp_path)
    data = open(d["sem_seg_file_name"], "rb").read()
    open(d["sem_seg_file_name"], "wb").write(data[: len(data) - 40])

    with pytest.raises(ImageDecodeError, match="label.png"):
        eval_mapper(["a", "b"])(d)


def test_not_an_image_fails_naming_the_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ImageDecodeError, match="notes.png"):
        read_image(path)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _mask_mapper(kind, is_train=True):
    from ovseg.data.dataset_mappers import (
        InstanceDatasetMapper,
        PanopticDatasetMapper,
        XPMInstanceDatasetMapper,
    )

    cls = {
        "instance": InstanceDatasetMapper,
        "panoptic": PanopticDatasetMapper,
        "xpm": XPMInstanceDatasetMapper,
    }[kind]
    return cls(
        is_train=is_train, augmentations=[], image_format="RGB", ignore_label=255,
        size_divisibility=-1, vocabulary=["a", "b"],
    )  # fmt: skip


def _mask_record(tmp_path, rgb):
    image = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(image, quality=95)
    pan = np.zeros(rgb.shape, np.uint8)
    pan[:32, :, 0] = 1  # segment id 1: the top half
    Image.fromarray(pan).save(tmp_path / "pan.png")
    return image, {
        "file_name": str(image), "height": 64, "width": 64, "annotations": [],
        "pan_seg_file_name": str(tmp_path / "pan.png"),
        "segments_info": [{"id": 1, "category_id": 0, "iscrowd": 0}],
    }  # fmt: skip


def test_a_decompression_bomb_fails_naming_the_file(tmp_path):
    """A header of 100000x100000: Pillow's own DecompressionBombError (neither OSError nor
    ValueError) escaped the errors that name the file and the web app's error handling."""
    import struct
    import zlib

    path = tmp_path / "huge.png"
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    header = bytearray(data[12:29])  # the IHDR chunk's type and fields
    header[4:12] = struct.pack(">II", 100000, 100000)
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(header)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError, match=r"huge\.png.*decompression-bomb limit"):
        read_image(str(path), format="RGB")


@pytest.mark.parametrize("kind", ["instance", "panoptic", "xpm"])
def test_mask_mappers_read_through_image_io(tmp_path, kind):
    """The instance, panoptic and XPM mappers decode as the semantic one does: a 16-bit
    grey photo is scaled, a truncated photo or panoptic PNG fails naming its file."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    image, record = _mask_record(tmp_path, np.zeros((64, 64, 3), np.uint8))
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(gray16)
    out = _mask_mapper(kind)({**record, "file_name": str(gray16)})
    assert (out["image"].numpy() == 255).mean() < 0.01  # detectron2's reader: 99.6 % white
    if kind == "panoptic":
        mask = out["instances"].gt_masks[0]
        assert mask[:32].all() and not mask[32:].any()

    _truncate(image)
    with pytest.raises(ImageDecodeError, match="photo.jpg"):
        _mask_mapper(kind)(record)
    if kind == "panoptic":
        _truncate(tmp_path / "pan.png")
        with pytest.raises(ImageDecodeError, match="pan.png"):
            _mask_mapper(kind)({**record, "file_name": str(gray16)})
