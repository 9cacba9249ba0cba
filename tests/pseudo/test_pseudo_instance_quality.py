"""The instance store's quality report: hand-placed pseudo instances against hand-placed
ground truth, every outcome counted once; its writer and tools/visualize_pseudo_labels.py
--quality."""

import importlib.util
import json

import numpy as np
import pytest
from ovseg_testing import ROOT

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.pseudo import InstancePseudoLabelStore, PseudoInstance
from ovseg.pseudo.instance_quality import (
    format_quality,
    instance_store_quality,
    write_store_quality,
)
from ovseg.pseudo.instances import encode_mask

VOCAB = ["circle", "square", "star", "cross"]
GT_NAMES = ["circle", "square", "star", "cross"]  # the dataset's contiguous ids


def _box(y0, y1, x0, x1, size=12):
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _pseudo(category, mask):
    return PseudoInstance(
        noun=category, category=category, category_id=VOCAB.index(category),
        box=(0.0, 0.0, 1.0, 1.0), mask=encode_mask(mask), cosine=0.5, score=0.6, proposal=0,
    )  # fmt: skip


@pytest.fixture()
def labelled(tmp_path):
    circle, star, cross = _box(0, 4, 0, 4), _box(0, 4, 6, 10), _box(7, 12, 0, 12)
    gt = [(0, circle), (2, star), (3, cross)]
    dicts = [
        {"image_id": "7", "file_name": "7.png", "height": 12, "width": 12,
         "annotations": [{"category_id": c, "segmentation": encode_mask(m), "iscrowd": 0}
                         for c, m in gt]},
        {"image_id": "8", "file_name": "8.png", "height": 12, "width": 12,
         "annotations": []},  # not in the store: skipped
    ]  # fmt: skip
    store = InstancePseudoLabelStore.create(
        str(tmp_path / "store"),
        {"fingerprint": "f" * 64, "vocabulary": VOCAB, "threshold": 0.0,
         "unseen": ["star", "cross"]},
    )  # fmt: skip
    instances = [
        _pseudo("circle", circle),  # correct
        _pseudo("star", cross),  # the cross: on another object
        _pseudo("cross", _box(7, 12, 0, 4)),  # a third of the cross: loose
        _pseudo("square", _box(5, 6, 5, 6)),  # on nothing
    ]
    store.write("7", {"height": 12, "width": 12, "nouns": [], "instances": instances})
    return store, dicts


def test_every_outcome_is_counted_per_class(labelled):
    store, dicts = labelled
    report = instance_store_quality(store, dicts, GT_NAMES)
    assert report["images"] == 1
    c = report["classes"]
    assert (c["circle"]["correct"], c["circle"]["recalled"], c["circle"]["gt"]) == (1, 1, 1)
    assert c["circle"]["precision"] == c["circle"]["recall"] == c["circle"]["named"] == 1.0
    assert (c["star"]["on_other"], c["star"]["recall"], c["star"]["named"]) == (1, 0.0, 0.0)
    assert (c["cross"]["loose"], c["cross"]["precision"], c["cross"]["named"]) == (1, 0.0, 1.0)
    assert (c["square"]["on_nothing"], c["square"]["gt"], c["square"]["recall"]) == (1, 0, None)
    assert c["star"]["unseen"] and not c["circle"]["unseen"]
    assert report["confusions"] == {"star -> cross": 1}
    # a looser threshold makes the third of the cross (IoU 1/3) correct
    loose = instance_store_quality(store, dicts, GT_NAMES, iou_threshold=0.3)
    assert loose["classes"]["cross"]["correct"] == 1
    table = format_quality(report)
    assert "| star * | 1 | 1 | 0.0 | 0.0 | 0.0 | 0 | 1 | 0 |" in table
    assert "star -> cross: 1" in table


def test_refuses_classes_outside_the_store(labelled):
    store, dicts = labelled
    with pytest.raises(ValueError, match=r"\['ring'\] are not in the store's vocabulary"):
        instance_store_quality(store, dicts, ["circle", "square", "star", "ring"])
    with pytest.raises(ValueError, match="IoU threshold 0"):
        instance_store_quality(store, dicts, GT_NAMES, iou_threshold=0)


def test_the_report_is_written_for_the_manifest_dataset(labelled, tmp_path):
    store, dicts = labelled
    name = "test_quality_shapes_train"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(thing_classes=GT_NAMES)
    with pytest.raises(ValueError, match="names no dataset in its manifest; give --dataset"):
        write_store_quality(store.root, str(tmp_path / "q"))
    report = write_store_quality(store.root, str(tmp_path / "q"), dataset=name)
    assert json.loads((tmp_path / "q" / "quality.json").read_text()) == report
    assert (tmp_path / "q" / "quality.md").read_text() == format_quality(report) + "\n"


def test_the_tool_prints_the_table_and_refuses_a_semantic_store(labelled, tmp_path, capsys):
    # the tool's main in this process (a subprocess would spend its time importing)
    spec = importlib.util.spec_from_file_location(
        "visualize_pseudo_labels_tool", ROOT / "tools" / "visualize_pseudo_labels.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    store, dicts = labelled
    name = "test_quality_tool_train"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=GT_NAMES)
    try:
        argv = ["--quality", "--store", store.root, "--dataset", name]
        assert tool.main([*argv, "--output", str(tmp_path / "q")]) == 0
        assert "| circle | 1 | 1 | 100.0 | 100.0 | 100.0 | 0 | 0 | 0 |" in capsys.readouterr().out
        bad = ["--quality", "--store", str(tmp_path / "q"), "--output", str(tmp_path / "r")]
        assert tool.main(bad) == 2
        assert "is not an instance pseudo-label store" in capsys.readouterr().err
    finally:
        DatasetCatalog.remove(name)
