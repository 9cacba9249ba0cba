"""Registration of the benchmark splits: names, metadata, loading and load-time errors."""

import importlib
import os

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data.datasets import (
    register_ade20k,
    register_ade20k_full,
    register_coco_stuff,
    register_pcontext,
    register_pcontext_full,
    register_voc,
)
from ovseg.data.datasets.common import datasets_root, register_sem_seg_split

REGISTER_ALL = (
    register_ade20k.register_all_ade20k,
    register_ade20k_full.register_all_ade20k_full,
    register_coco_stuff.register_all_coco_stuff,
    register_voc.register_all_voc,
    register_pcontext.register_all_pcontext,
    register_pcontext_full.register_all_pcontext_full,
)

SPLITS = {  # name: (vocabulary, number of classes, number of unseen classes, ignore label)
    "ade20k_sem_seg_{}": ("ade150", 150, 15, 255),
    "ade20k_full_sem_seg_{}": ("ade847", 847, 0, 65535),
    "coco_2017_{}_stuff_sem_seg": ("coco171", 171, 15, 255),
    "voc_sem_seg_{}": ("voc20", 20, 5, 255),
    "pcontext_sem_seg_{}": ("pc59", 59, 10, 255),
    "pcontext_full_sem_seg_{}": ("pc459", 459, 0, 65535),
}


@pytest.fixture
def reregister():
    """Register every split under a test root; put the real root back afterwards."""
    yield lambda root: [register_all(str(root)) for register_all in REGISTER_ALL]
    for register_all in REGISTER_ALL:
        register_all(datasets_root())


@pytest.mark.parametrize("pattern", sorted(SPLITS))
@pytest.mark.parametrize("split", ["train", "val"])
def test_metadata(pattern, split):
    name = pattern.format(split)
    vocabulary, num_classes, num_unseen, ignore = SPLITS[pattern]
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    assert meta.vocabulary_name == vocabulary
    assert meta.evaluator_type == "ovseg_sem_seg"
    assert meta.ignore_label == ignore
    assert len(meta.stuff_classes) == len(meta.stuff_colors) == num_classes
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in meta.stuff_colors)
    assert len(meta.unseen_classes) == num_unseen
    assert meta.seen_classes == [c for c in meta.stuff_classes if c not in meta.unseen_classes]
    assert meta.image_root and meta.sem_seg_root


def test_ours_replace_detectron2_builtin_ade20k():
    meta = MetadataCatalog.get("ade20k_sem_seg_val")
    assert meta.evaluator_type == "ovseg_sem_seg"  # detectron2's own says "sem_seg"
    assert meta.stuff_classes[8] == "window"  # detectron2's own says "window "


def test_colors_are_deterministic_and_distinct():
    colors = MetadataCatalog.get("voc_sem_seg_val").stuff_colors
    assert colors == MetadataCatalog.get("voc_sem_seg_train").stuff_colors
    assert len({tuple(c) for c in colors}) == len(colors)
    full = MetadataCatalog.get("ade20k_full_sem_seg_val").stuff_colors
    assert full[:20] == colors


def test_import_reads_env_and_touches_no_file(tmp_path, monkeypatch):
    root = tmp_path / "not-there"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    try:
        importlib.reload(register_voc)  # registers at import; must not fail without data
        meta = MetadataCatalog.get("voc_sem_seg_val")
        assert meta.sem_seg_root == os.path.join(
            str(root), "VOCdevkit", "VOC2012", "annotations_detectron2", "val"
        )
        with pytest.raises(FileNotFoundError) as err:
            DatasetCatalog.get("voc_sem_seg_val")
        message = str(err.value)
        assert meta.sem_seg_root in message
        assert "datasets/README.md" in message and "prepare_voc_sem_seg.py" in message
    finally:
        monkeypatch.undo()
        importlib.reload(register_voc)
    assert MetadataCatalog.get("voc_sem_seg_val").sem_seg_root.startswith(datasets_root())


@pytest.mark.parametrize(
    "name, script",
    [
        ("ade20k_sem_seg_train", "prepare_ade20k_sem_seg.py"),
        ("ade20k_full_sem_seg_val", "prepare_ade20k_full_sem_seg.py"),
        ("coco_2017_val_stuff_sem_seg", "prepare_coco_stuff_sem_seg.py"),
        ("pcontext_sem_seg_val", "prepare_pcontext_sem_seg.py"),
        ("pcontext_full_sem_seg_train", "prepare_pcontext_full_sem_seg.py"),
    ],
)
def test_missing_dataset_fails_at_load_naming_path(tmp_path, reregister, name, script):
    reregister(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get(name)
    assert MetadataCatalog.get(name).sem_seg_root in str(err.value)
    assert str(tmp_path) in str(err.value) and script in str(err.value)


def test_end_to_end_prepare_then_load(tmp_path, raw, read, prepare_script, reregister):
    """Raw layouts -> prepare scripts -> registered splits -> dicts pointing at real files."""
    ade = tmp_path / "ADEChallengeData2016"
    for split, stem in (("training", "ADE_train_00000001"), ("training", "ADE_train_00000002"),
                        ("validation", "ADE_val_00000001")):  # fmt: skip
        raw.jpg(ade / f"images/{split}/{stem}.jpg", 2, 2)
        raw.png(ade / f"annotations/{split}/{stem}.png", [[0, 5], [6, 150]])
    voc = tmp_path / "VOCdevkit/VOC2012"
    for stem in ("2007_000032", "2007_000033", "2007_000039"):
        raw.jpg(voc / f"JPEGImages/{stem}.jpg", 2, 2)
        raw.png(voc / f"SegmentationClass/{stem}.png", [[0, 3], [3, 255]], palette=True)
    raw.lines(voc / "ImageSets/Segmentation/train.txt", ["2007_000032", "2007_000039"])
    raw.lines(voc / "ImageSets/Segmentation/val.txt", ["2007_000033"])
    voc10 = tmp_path / "VOCdevkit/VOC2010"
    for stem in ("2008_000002", "2008_000003"):
        raw.jpg(voc10 / f"JPEGImages/{stem}.jpg", 1, 2)
        raw.mat(voc10 / f"trainval/{stem}.mat", [[2, 458]])
    raw.lines(voc10 / "ImageSets/Main/train.txt", ["2008_000002"])
    raw.lines(voc10 / "ImageSets/Main/val.txt", ["2008_000003"])
    for script in ("prepare_ade20k_sem_seg", "prepare_voc_sem_seg", "prepare_pcontext_sem_seg",
                   "prepare_pcontext_full_sem_seg"):  # fmt: skip
        prepare_script(script).main(["--root", str(tmp_path)])

    reregister(tmp_path)
    train = DatasetCatalog.get("ade20k_sem_seg_train")
    assert [d["image_id"] for d in train] == ["ADE_train_00000001", "ADE_train_00000002"]
    assert train[1] == {
        "file_name": str(ade / "images/training/ADE_train_00000002.jpg"),
        "sem_seg_file_name": str(ade / "annotations_detectron2/training/ADE_train_00000002.png"),
        "image_id": "ADE_train_00000002",
    }
    np.testing.assert_array_equal(read(train[0]["sem_seg_file_name"]), [[255, 4], [5, 149]])
    assert [d["image_id"] for d in DatasetCatalog.get("ade20k_sem_seg_val")] == ["ADE_val_00000001"]

    # VOC: the split is defined by the label folder; JPEGImages holds every image
    voc_train = DatasetCatalog.get("voc_sem_seg_train")
    assert [d["image_id"] for d in voc_train] == ["2007_000032", "2007_000039"]
    assert voc_train[0]["file_name"] == str(voc / "JPEGImages/2007_000032.jpg")
    np.testing.assert_array_equal(read(voc_train[0]["sem_seg_file_name"]), [[255, 2], [2, 255]])
    assert [d["image_id"] for d in DatasetCatalog.get("voc_sem_seg_val")] == ["2007_000033"]

    pc = DatasetCatalog.get("pcontext_sem_seg_val")
    assert [d["image_id"] for d in pc] == ["2008_000003"]
    np.testing.assert_array_equal(read(pc[0]["sem_seg_file_name"]), [[0, 58]])
    pc_full = DatasetCatalog.get("pcontext_full_sem_seg_train")
    np.testing.assert_array_equal(read(pc_full[0]["sem_seg_file_name"]), [[1, 457]])


def test_image_without_label_and_label_without_image(tmp_path, raw, reregister):
    ade = tmp_path / "ADEChallengeData2016"
    raw.jpg(ade / "images/validation/ADE_val_00000001.jpg")
    raw.jpg(ade / "images/validation/ADE_val_00000002.jpg")
    raw.png(ade / "annotations_detectron2/validation/ADE_val_00000001.png", [[1]])
    voc = tmp_path / "VOCdevkit/VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    raw.png(voc / "annotations_detectron2/val/2007_000033.png", [[1]])
    reregister(tmp_path)

    missing_label = ade / "annotations_detectron2/validation/ADE_val_00000002.png"
    with pytest.raises(FileNotFoundError, match=f"has no label file {missing_label}"):
        DatasetCatalog.get("ade20k_sem_seg_val")
    with pytest.raises(FileNotFoundError, match="has no image .*2007_000033.jpg"):
        DatasetCatalog.get("voc_sem_seg_val")
    (voc / "annotations_detectron2/val/2007_000033.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*\.png files in .*annotations_detectron2"):
        DatasetCatalog.get("voc_sem_seg_val")


def test_register_rejects_ignore_label_inside_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="ignore_label 255 collides .* 847-class"):
        register_sem_seg_split(
            "ovseg_test_bad_ignore",
            image_root=str(tmp_path),
            sem_seg_root=str(tmp_path),
            vocabulary_name="ade847",
            prepare_script="prepare_ade20k_full_sem_seg.py",
        )
    assert "ovseg_test_bad_ignore" not in DatasetCatalog.list()
