"""tools/visualize_dataset.py on the episode benchmarks: a record's class where its mask shows
it (PASCAL-5i's class + 1, FSS-1000's thresholded picture), nothing drawn elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
from ovseg_testing import registered_fewshot

from detectron2.data import DatasetCatalog

from ovseg.data import dataset_views


@pytest.fixture(scope="module")
def fewshot(tmp_path_factory):
    with registered_fewshot(tmp_path_factory.mktemp("fewshot")) as root:
        yield root


def test_a_pascal_record_shows_its_class_not_the_mask_values(fewshot):
    # the fixture's masks hold class id + 1 on the left half, 255 on one column, 0 elsewhere;
    # read as class ids, 0 would be drawn as "aeroplane" and the class as the next one
    info = dataset_views.dataset_metadata("pascal5i_fold1_test")
    record = DatasetCatalog.get("pascal5i_fold1_test")[0]
    names = info["metadata"].stuff_classes
    _, present = dataset_views.draw_ground_truth(record, info)
    assert present == {names[record["episode_class"]]: "unseen"}
    label = dataset_views._episode_label(record, info, (64, 64))
    expected = np.full((64, 64), 255)
    expected[:, :32] = record["episode_class"]  # the boundary column (255) is not the class
    assert np.array_equal(label, expected)


def test_the_tool_writes_one_picture_per_fss_record(fewshot, tmp_path):
    written = dataset_views.write_ground_truth_views("fss1000_test", str(tmp_path), num=2)
    assert [p.rsplit("/", 1)[1] for p in written] == ["abe's_flyingfish_1.png", "accordion_1.png"]


def test_an_fss_record_of_a_class_id_over_255_and_one_of_id_255(fewshot):
    info = dataset_views.dataset_metadata("fss1000_test")
    names = info["metadata"].stuff_classes
    record = DatasetCatalog.get("fss1000_test")[0]  # class 760
    _, present = dataset_views.draw_ground_truth(record, info)
    assert present == {names[760]: "unseen"}
    # class 255 is a training class: the episode's ignore must not paint the background as it
    train = dataset_views.dataset_metadata("fss1000_train")
    record = DatasetCatalog.get("fss1000_train")[255]
    assert record["episode_class"] == 255
    _, present = dataset_views.draw_ground_truth(record, train)
    assert present == {names[255]: "seen"}
    ignore = len(names)  # what draw_ground_truth uses: no class id
    label = dataset_views._episode_label(record, {**train, "ignore_label": ignore}, (32, 32))
    # the fixture's mask: white left half and a grey-128 column are the class, grey 127 not
    expected = np.full((32, 32), ignore)
    expected[:, :17] = 255
    assert np.array_equal(label, expected)
