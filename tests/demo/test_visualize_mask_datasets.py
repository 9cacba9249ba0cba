"""tools/visualize_dataset.py on the toy world's panoptic and instance splits."""

from __future__ import annotations

import numpy as np
import pytest
from ovseg_testing import registered_toy_world
from PIL import Image

from detectron2.data import DatasetCatalog

from ovseg.data import dataset_views


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    with registered_toy_world(tmp_path_factory.mktemp("toy"), num_train=2, num_val=6) as root:
        yield root


@pytest.mark.parametrize("kind", ["panoptic", "instance"])
def test_segments_are_drawn_with_the_splits_unseen_shapes(toy, tmp_path, kind):
    name = f"toy_world_{kind}_val"
    written = dataset_views.write_ground_truth_views(name, str(tmp_path), num=6, min_size=128)
    assert len(written) == 6 and Image.open(written[0]).size == (128, 128)
    info = dataset_views.dataset_metadata(name)
    seen_unseen = {}
    for d in DatasetCatalog.get(name):
        picture, present = dataset_views.draw_ground_truth(d, info, min_size=128)
        assert picture.shape == (128, 128, 3)
        seen_unseen.update(present)
    for shape, status in seen_unseen.items():
        assert status == ("unseen" if shape in ("triangle", "ring") else "seen"), shape
    assert ("background" in seen_unseen) == (kind == "panoptic")  # stuff only in panoptic


def test_unseen_segments_are_hatched(toy):
    name = "toy_world_panoptic_val"
    d = next(d for d in DatasetCatalog.get(name)
             if any(s["category_id"] in (3, 5) for s in d["segments_info"]))  # fmt: skip
    info = dataset_views.dataset_metadata(name)
    hatched, _ = dataset_views.draw_ground_truth(d, info, min_size=128)
    plain, _ = dataset_views.draw_ground_truth(d, {**info, "unseen": ()}, min_size=128)
    assert np.abs(hatched.astype(int) - plain.astype(int)).sum(-1).max() > 30
