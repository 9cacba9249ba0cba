"""Reading images and label maps: the documented format, or an error naming the file.

detectron2's ``read_image`` converts a 16-bit grayscale image to RGB by clipping (every value
above 255 becomes white) and decodes lazily, so a truncated file fails later with Pillow's
"image file is truncated" and no file name. Here every image is decoded in full on reading,
high-bit-depth grayscale is scaled to 8 bits, and a file that cannot be decoded raises
:class:`ImageDecodeError` naming it (a label of another size than its image:
:class:`LabelSizeError`). Raised in a DataLoader worker, torch re-raises such an error in the
main process with the worker's whole traceback as its message: :func:`original_message` gives
back the one line.
"""

from __future__ import annotations

import os
from typing import Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detectron2.data import detection_utils as d2_utils

__all__ = [
    "DataFileError",
    "ImageDecodeError",
    "LabelSizeError",
    "original_message",
    "pil_to_numpy",
    "read_image",
    "read_image_size",
    "read_label",
]

# Pillow's modes for 16-bit grayscale (PNG, TIFF); "I" is how older Pillow reads them
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class DataFileError(Exception):
    """A dataset's file that cannot be used; the message names it, what is wrong with it and
    what to do."""


class ImageDecodeError(DataFileError, OSError):
    """An image or label file that cannot be decoded (truncated, corrupt, empty, not an
    image)."""


class LabelSizeError(DataFileError, ValueError):
    """A label map whose size is not its image's."""


def original_message(error: BaseException) -> str:
    """The message ``error`` was raised with, also when torch re-raised it from a DataLoader
    worker ("Caught X in DataLoader worker process 0. Original Traceback ...": the worker's
    traceback, whose last line is the error's own).

    Args:
        error: the exception as caught.

    Returns:
        str: its message, without a worker's traceback.
    """
    text = str(error)
    if not (text.startswith("Caught ") and "DataLoader worker process" in text):
        return text
    kind = type(error)
    for name in (f"{kind.__module__}.{kind.__qualname__}", kind.__qualname__):
        _, found, tail = text.rpartition(f"\n{name}: ")
        if found:
            return tail.strip()
    return text.strip().splitlines()[-1]


# Pillow's decompression-bomb guard is its own Exception subclass, neither OSError nor
# ValueError: it escaped the errors that name the file
_UNREADABLE = (
    OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError
)  # fmt: skip
_EXIF_ORIENTATION = 0x0112
TURNED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _open(path: str, exif_orientation: bool = True) -> Image.Image:
    """Open and fully decode ``path`` (EXIF orientation applied unless told not to), naming it
    on failure."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now: a truncated file fails here, not in a transform
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file {path!r} does not exist") from None
    except _UNREADABLE as e:
        raise _decode_error(path, e) from None
    return d2_utils._apply_exif_orientation(image) if exif_orientation else image


def _decode_error(path: str, e: BaseException) -> ImageDecodeError:
    if isinstance(e, Image.DecompressionBombError):
        return ImageDecodeError(
            f"Image file {path!r} is larger than Pillow's decompression-bomb limit ({e}); "
            "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        )
    if _is_empty(path):  # Pillow's "cannot identify image file <_io.BufferedReader ...>"
        return ImageDecodeError(
            f"Image file {path!r} is empty (0 bytes), as an interrupted download or copy "
            "leaves it: copy or convert it again, or remove it from the dataset"
        )
    return ImageDecodeError(
        f"Cannot decode image file {path!r} ({type(e).__name__}: {e}); the file is "
        "truncated, corrupt or not an image: re-export it or remove it from the dataset"
    )


def _is_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def read_image_size(path: str | os.PathLike) -> Tuple[int, int, int]:
    """(height, width, EXIF orientation) of an image as :func:`read_image` returns it, from
    its header (nothing is decoded).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageDecodeError: it is no image; the message names the file.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file {path!r} does not exist") from None
    except _UNREADABLE as e:
        raise _decode_error(path, e) from None
    if orientation in TURNED_ORIENTATIONS:
        width, height = height, width
    return height, width, orientation


def _to_8bit(image: Image.Image, what: str) -> Image.Image:
    """A grayscale image of more than 8 bits as mode "L", scaled (65535 -> 255); ``what``
    names the image in errors ("Image file 'a.png'")."""
    if image.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ImageDecodeError(
                f"{what} is {image.mode} grayscale with values in "
                f"[{values.min()}, {values.max()}]; only 8- and 16-bit images are supported"
            )
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ImageDecodeError(
                f"{what} is a float image with values outside [0, 1]; convert it to 8-bit"
            )
        return Image.fromarray(np.rint(values * 255).astype(np.uint8), mode="L")
    return image


def read_image(
    path: str | os.PathLike, format: str = "RGB", *, exif_orientation: bool = True
) -> np.ndarray:
    """Read an image as detectron2's ``read_image`` documents: (H, W, C) uint8.

    16-bit (and float in [0, 1]) grayscale is scaled to 8 bits before the conversion, so
    its full range maps onto [0, 255]; palette, alpha and CMYK images are converted by Pillow.

    Args:
        path: the image file.
        format (str): "RGB", "BGR" or "L" (any mode of ``detection_utils.read_image``).
        exif_orientation (bool): turn the image as its EXIF orientation says (detectron2's
            and OpenCV's reading); False keeps the stored pixels (``PIL.Image.open``, as
            HSNet's loaders read).

    Returns:
        np.ndarray: (H, W, 3) uint8 for RGB/BGR, (H, W, 1) for "L".

    Raises:
        FileNotFoundError: the file does not exist.
        ImageDecodeError: it cannot be decoded; the message names the file.
    """
    path = os.fspath(path)
    image = _to_8bit(_open(path, exif_orientation), f"Image file {path!r}")
    return d2_utils.convert_PIL_to_numpy(image, format)


def pil_to_numpy(image: Image.Image, format: str = "RGB", what: str = "image") -> np.ndarray:
    """A PIL image (``Image.open``'s, a web upload's) as :func:`read_image` reads its file: its
    EXIF orientation applied, 16-bit and float grayscale scaled to 8 bits (Pillow's own
    ``convert("RGB")`` clips them: a 16-bit image turns white), then converted to ``format``.

    The orientation is applied with ``ImageOps.exif_transpose``, which drops the tag, so an
    image already turned (as gradio turns uploads) is not turned again.

    Raises:
        ImageDecodeError: values no 8-bit image can hold; the message names ``what``.
    """
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except _UNREADABLE as e:
        raise ImageDecodeError(f"Cannot decode {what} ({type(e).__name__}: {e})") from None
    return d2_utils.convert_PIL_to_numpy(_to_8bit(image, what[:1].upper() + what[1:]), format)


def read_label(path: str | os.PathLike, *, exif_orientation: bool = True) -> np.ndarray:
    """Read a label map as stored: palette indices for mode "P", raw values for 8/16-bit.

    Args:
        path: the label PNG (mode L, P, I;16, I or 1, whose bits read as 0 and 1).
        exif_orientation (bool): as :func:`read_image`.

    Returns:
        np.ndarray: (H, W) (or (H, W, C) for a colour file, which callers refuse) array.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageDecodeError: it cannot be decoded; the message names the file.
    """
    path = os.fspath(path)
    label = np.asarray(_open(path, exif_orientation))
    # a 1-bit PNG (mode "1", a binary dataset's) reads as bool: its classes are 0 and 1
    return label.astype(np.uint8) if label.dtype == np.bool_ else label
