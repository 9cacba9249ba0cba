"""python -m ovseg.data.datasets.custom decodes every image of a split: a truncated or corrupt
image (its header read, so its label's size check passes) is one line naming it, exit 2,
not a training run that stops when its loader reaches the file."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ovseg.data.datasets.custom import _main


def test_a_truncated_image_is_found_by_the_checker(tmp_path, capsys):
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    rng = np.random.default_rng(0)
    for stem in ("a", "b", "c"):
        Image.fromarray(np.zeros((64, 96), np.uint8)).save(tmp_path / "labels" / f"{stem}.png")
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), np.uint8)).save(buffer, "JPEG")
        data = buffer.getvalue()
        (tmp_path / "images" / f"{stem}.jpg").write_bytes(
            data[: len(data) // 2] if stem == "b" else data
        )
    registration = tmp_path / "reg.yaml"
    registration.write_text(
        "name: checker_images\nvocabulary: 'a; b'\nsplits:\n"
        "  s: {images: images, labels: labels}\n"
    )
    assert _main([str(registration)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1].startswith("1 problem(s)"), err
    assert "'checker_images_s': 1 of 3 images cannot be decoded" in err[0]
    assert str(tmp_path / "images" / "b.jpg") in err[0] and "truncated" in err[0]
    (tmp_path / "images" / "b.jpg").unlink()
    (tmp_path / "labels" / "b.png").unlink()
    assert _main([str(registration)]) == 0
    assert capsys.readouterr().out.startswith("checker_images_s: 2 images")
