"""A dataset file that cannot be used (truncated, empty, not an image, a label of another size
than its image) ends a job in one line: the file, what is wrong, its dataset and what to do,
also when a DataLoader worker read it (torch re-raises the worker's error with its whole
traceback as the message); what the run had written is kept whole."""

from __future__ import annotations

import numpy as np
import pytest
from ovseg_testing import eval_mapper
from PIL import Image

from ovseg.data.image_io import ImageDecodeError, LabelSizeError, read_image


def test_an_empty_file_is_said_to_be_empty(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(f"Image file {str(path)!r} is empty (0 bytes)"), message
    assert "remove it from the dataset" in message and "BufferedReader" not in message


def test_a_label_of_another_size_says_what_to_do(tmp_path):
    image, label = tmp_path / "a.png", tmp_path / "a_label.png"
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(image)
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(label)
    record = {"file_name": str(image), "sem_seg_file_name": str(label)}
    with pytest.raises(LabelSizeError, match="convert the label again, or remove the image"):
        eval_mapper(["a", "b"])(record)
