"""The user's own datasets (ovseg/data/datasets/custom.py): every vocabulary form, the
registration file and DATASETS.CUSTOM, COCO instance/panoptic folders, and a clear error for
each kind of bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from ovseg_testing import ROOT
from ovseg_testing.panoptic import write_tiny_panoptic
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data.datasets.custom import (
    load_registration_file,
    register_custom_dataset,
    register_from_config,
)
from ovseg.data.image_io import LabelSizeError
from ovseg.engine.defaults import load_config

CONFIG = str(ROOT / "configs" / "toy" / "maskclip.yaml")


def write_folder(root, labels=((0, 1), (2, 255)), names=("a", "b")):
    """images/ and labels/ under ``root``: one 4x4 image per name, its label holding the
    given values (left half, right half)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for name, (left, right) in zip(names, labels):
        Image.fromarray(np.full((4, 4, 3), 90, np.uint8)).save(root / "images" / f"{name}.jpg")
        label = np.full((4, 4), left, np.uint8)
        label[:, 2:] = right
        Image.fromarray(label).save(root / "labels" / f"{name}.png")
    return root


@pytest.mark.parametrize(
    "vocabulary, names",
    [
        (["sky", "tree", "road"], ["sky", "tree", "road"]),
        ("sky; tree, bush; road", ["sky", "tree, bush", "road"]),
        ("sky,tree,road", ["sky", "tree", "road"]),
    ],
)
def test_vocabulary_forms(tmp_path, vocabulary, names):
    write_folder(tmp_path)
    register_custom_dataset(
        "custom_forms_test", images=tmp_path / "images", labels=tmp_path / "labels",
        vocabulary=vocabulary, unseen=["road"],
    )  # fmt: skip
    meta = MetadataCatalog.get("custom_forms_test")
    assert meta.stuff_classes == names
    assert meta.unseen_classes == ["road"] and meta.seen_classes == names[:2]
    assert meta.ignore_label == 255 and meta.evaluator_type == "ovseg_sem_seg"
    dicts = DatasetCatalog.get("custom_forms_test")
    assert [d["image_id"] for d in dicts] == ["a", "b"]
    assert dicts[0]["sem_seg_file_name"].endswith("labels/a.png")


def test_builtin_and_json_vocabulary(tmp_path):
    write_folder(tmp_path)
    register_custom_dataset("custom_b_test", images=tmp_path / "images",
                            labels=tmp_path / "labels", vocabulary="toy9")  # fmt: skip
    assert MetadataCatalog.get("custom_b_test").unseen_classes == ["triangle", "ring"]
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"classes": ["x", "y", "z"], "unseen": ["z"]}))
    register_custom_dataset("custom_j_test", images=tmp_path / "images",
                            labels=tmp_path / "labels", vocabulary=str(path))  # fmt: skip
    assert MetadataCatalog.get("custom_j_test").unseen_classes == ["z"]
    assert len(DatasetCatalog.get("custom_j_test")) == 2


def _load(tmp_path, name="custom_bad_test", **kwargs):
    args = dict(images=tmp_path / "images", labels=tmp_path / "labels", vocabulary="a;b;c")
    register_custom_dataset(name, **{**args, **kwargs})
    return DatasetCatalog.get(name)


def test_label_values_outside_the_vocabulary(tmp_path):
    write_folder(tmp_path, labels=((0, 1), (2, 7)))
    with pytest.raises(ValueError, match=r"label .*b\.png holds values \[7\] outside the 3-class"):
        _load(tmp_path)
    assert len(_load(tmp_path, check_labels=False)) == 2  # the check can be skipped


def test_name_mismatch_says_which_file(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "labels" / "b.png").rename(tmp_path / "labels" / "b_label.png")
    with pytest.raises(ValueError) as err:
        _load(tmp_path)
    message = str(err.value)
    assert "1 images without a label PNG of the same name" in message
    assert "images/b.jpg" in message and "labels/b.png" in message
    assert "1 labels without an image" in message and "b_label.png" in message


def test_missing_folder_and_bad_values(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image folder .*nowhere does not exist"):
        _load(tmp_path, images=tmp_path / "nowhere")
    write_folder(tmp_path)
    with pytest.raises(ValueError, match="ignore_label 1 is a class index"):
        _load(tmp_path, ignore_label=1)
    with pytest.raises(ValueError, match="Unseen class 'd' is not in the vocabulary"):
        _load(tmp_path, unseen=["d"])
    colour = tmp_path / "labels" / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(colour)
    with pytest.raises(ValueError, match="single-channel PNG"):
        _load(tmp_path)


def test_registration_file_and_config(tmp_path, monkeypatch):
    data = write_folder(tmp_path / "data")
    (data / "reg.yaml").write_text(
        "name: custom_file_test\nvocabulary: 'a; b; c'\nsplits:\n"
        "  train: {images: images, labels: labels}\n"
        "  val: {images: images, labels: labels, unseen: [c]}\n"
    )
    specs = load_registration_file(data / "reg.yaml")
    assert [s["name"] for s in specs] == ["custom_file_test_train", "custom_file_test_val"]
    assert specs[0]["images"] == str((data / "images").resolve())  # relative to the file
    opts = ["DATASETS.CUSTOM", str(data / "reg.yaml"), "DATASETS.TEST", "('custom_file_test_val',)"]
    cfg = load_config(CONFIG, opts)  # a plain path on the command line is a one-file list
    assert cfg.DATASETS.CUSTOM == [str(data / "reg.yaml")]
    # a relative path is kept absolute: the run's saved config loads from anywhere
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIG, ["DATASETS.CUSTOM", "data/reg.yaml"])
    assert cfg.DATASETS.CUSTOM == [str(data / "reg.yaml")]
    (tmp_path / "config.yaml").write_text(cfg.dump())
    monkeypatch.chdir(data / "images")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.DATASETS.CUSTOM == [str(data / "reg.yaml")]
    assert MetadataCatalog.get("custom_file_test_val").unseen_classes == ["c"]
    assert len(DatasetCatalog.get("custom_file_test_train")) == 2
    inline = {"name": "custom_inline_test", "images": str(data / "images"),
              "labels": str(data / "labels"), "vocabulary": ["a", "b", "c"]}  # fmt: skip
    cfg.defrost()
    cfg.DATASETS.CUSTOM = [inline]
    assert register_from_config(cfg) == ["custom_inline_test"]
    cfg.DATASETS.CUSTOM = [{**inline, "label_dir": "x"}]
    with pytest.raises(ValueError, match=r"unknown keys \['label_dir'\]"):
        register_from_config(cfg)
    cfg.DATASETS.CUSTOM = [str(tmp_path / "missing.yaml")]
    with pytest.raises(FileNotFoundError, match="missing.yaml' does not exist"):
        register_from_config(cfg)


def test_json_registration_wrapper_relative_vocabulary_and_stray_files(tmp_path, monkeypatch):
    # the forms docs/custom_dataset.md names: a .json file, {datasets: [...]}, a vocabulary
    # .json beside it (relative to the registration file, not the working folder), and an
    # image folder holding a .DS_Store and notes beside the images
    data = write_folder(tmp_path / "data")
    (data / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    (data / "images/.DS_Store").write_bytes(b"\0\1")
    (data / "images/notes.txt").write_text("taken in May")
    spec = {"name": "custom_json_test", "vocabulary": "classes.json", "unseen": "b; c",
            "images": "images", "labels": "labels"}  # fmt: skip
    (data / "reg.json").write_text(json.dumps({"datasets": [spec]}))
    monkeypatch.chdir(tmp_path)
    names = register_from_config(load_config(CONFIG, ["DATASETS.CUSTOM", "data/reg.json"]))
    try:
        assert names == ["custom_json_test"]
        assert MetadataCatalog.get("custom_json_test").stuff_classes == ["a", "b", "c"]
        assert MetadataCatalog.get("custom_json_test").unseen_classes == ["b", "c"]
        records = DatasetCatalog.get("custom_json_test")
        assert sorted(os.path.basename(r["file_name"]) for r in records) == ["a.jpg", "b.jpg"]
    finally:
        DatasetCatalog.remove("custom_json_test")
        MetadataCatalog.remove("custom_json_test")
    # two images of one name cannot be told apart by their label
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(data / "images/a.png")
    with pytest.raises(ValueError, match=r"a\.jpg and .*a\.png are two images with one name"):
        _load(tmp_path, images=str(data / "images"), labels=str(data / "labels"))


def test_coco_instance_and_panoptic_folders(tmp_path):
    coco = write_tiny_panoptic(tmp_path)
    register_custom_dataset(
        "custom_instance_test", kind="instance", images=coco / "val2017",
        annotations=coco / "annotations/instances_val2017.json", unseen=["dog"],
    )  # fmt: skip
    meta = MetadataCatalog.get("custom_instance_test")
    assert meta.thing_classes == ["cat", "dog"] and meta.unseen_classes == ["dog"]
    dicts = DatasetCatalog.get("custom_instance_test")
    assert sorted(a["category_id"] for a in dicts[0]["annotations"]) == [0, 0, 1]
    register_custom_dataset(
        "custom_panoptic_test", kind="panoptic", images=coco / "val2017",
        annotations=coco / "annotations/panoptic_val2017.json",
        panoptic_labels=coco / "panoptic_val2017", vocabulary="cat; dog; sky",
    )  # fmt: skip
    meta = MetadataCatalog.get("custom_panoptic_test")
    assert meta.stuff_classes == ["cat", "dog", "sky"] and meta.evaluator_type == "ovseg_panoptic"
    assert len(DatasetCatalog.get("custom_panoptic_test")[0]["segments_info"]) == 4
    with pytest.raises(ValueError, match="differs from the categories"):
        register_custom_dataset(
            "custom_panoptic_bad_test", kind="panoptic", images=coco / "val2017",
            annotations=coco / "annotations/panoptic_val2017.json",
            panoptic_labels=coco / "panoptic_val2017", vocabulary="cat; sky; dog",
        )  # fmt: skip


def test_checker_reports_every_split_in_one_line_each(tmp_path, capsys):
    """``python -m ovseg.data.datasets.custom``: each split's problem on its own line (a bad
    training label does not hide a missing validation folder), exit 2, no traceback."""
    from ovseg.data.datasets.custom import _main

    data = write_folder(tmp_path / "data", labels=((0, 1), (2, 12)))
    (data / "reg.yaml").write_text(
        "name: custom_checker_test\nvocabulary: 'a; b; c'\nsplits:\n"
        "  train: {images: images, labels: labels}\n"
        "  val: {images: val/images, labels: val/labels}\n"
    )
    assert _main([str(data / "reg.yaml"), str(tmp_path / "nowhere.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4, err  # train, val, the missing file, the summary
    assert "custom_checker_test_train" in err[0] and "holds values [12]" in err[0]
    # the folder is named as resolved from the registration file, not the working directory
    assert f"image folder {data / 'val' / 'images'} does not exist" in err[1]
    assert "working directory" not in err[1] and "relative to its own folder" in err[1]
    assert "nowhere.yaml' does not exist" in err[2] and err[3].startswith("3 problem(s)")
    write_folder(data / "val")
    (data / "labels" / "b.png").unlink()
    (data / "images" / "b.jpg").unlink()
    assert _main([str(data / "reg.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "custom_checker_test_train: 1 images, 3 classes, unseen []",
        "custom_checker_test_val: 2 images, 3 classes, unseen []",
    ]


def test_a_label_not_of_its_images_size_is_refused_when_loaded(tmp_path):
    """Found when the split is loaded (the checker, set-up), not after training in a mapper;
    a phone photo turned by its EXIF orientation is named as the cause."""
    write_folder(tmp_path)
    Image.fromarray(np.zeros((4, 3), np.uint8)).save(tmp_path / "labels" / "b.png")
    # a DataFileError: train_net.py ends it in one line wherever the split is loaded
    with pytest.raises(
        LabelSizeError, match=r"label .*b.png is 3x4 \(WxH\) but its image .*b.jpg is 4x4"
    ):
        _load(tmp_path)

    # stored 6 wide and 4 high, shown turned (EXIF orientation 6): the mapper reads 4x6
    photo = Image.fromarray(np.full((4, 6, 3), 90, np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(tmp_path / "images" / "b.jpg", exif=exif)
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "labels" / "b.png")
    with pytest.raises(ValueError, match="EXIF orientation 6 turns the stored 6x4") as info:
        _load(tmp_path)
    assert "is 6x4 (WxH) but its image" in str(info.value)
    Image.fromarray(np.zeros((6, 4), np.uint8)).save(tmp_path / "labels" / "b.png")
    assert len(_load(tmp_path)) == 2  # a label of the picture as shown fits


def test_inline_specs_are_saved_with_absolute_paths(tmp_path, monkeypatch):
    """The saved config of a run with inline specs did not load from another folder."""
    write_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    split = {"images": "data/images", "labels": "data/labels"}
    spec = [{"name": "custom_inline_abs", "vocabulary": "a; b; c",
             "splits": {"train": split, "val": {**split, "unseen": ["c"]}}}]  # fmt: skip
    cfg = load_config(CONFIG, ["DATASETS.CUSTOM", repr(spec)])
    (saved,) = cfg.DATASETS.CUSTOM
    assert saved["splits"]["train"]["images"] == str(tmp_path / "data" / "images")
    (tmp_path / "config.yaml").write_text(cfg.dump())
    monkeypatch.chdir(tmp_path / "data" / "labels")
    again = load_config(str(tmp_path / "config.yaml"))
    assert len(DatasetCatalog.get(again.DATASETS.CUSTOM[0]["name"] + "_val")) == 2


def test_training_on_a_custom_sets_unseen_classes_is_named(tmp_path):
    """A real-CLIP config of a supervised protocol (ZERO_SHOT_SETTING "none") taken for
    one's own data trained on its unseen classes without a word."""
    from ovseg.engine.checks import trained_unseen_warning

    data = write_folder(tmp_path / "data")
    (data / "reg.yaml").write_text(
        "name: custom_unseen_test\nvocabulary: 'a; b; c'\nunseen: [c]\nsplits:\n"
        "  train: {images: images, labels: labels}\n"
    )
    opts = ["DATASETS.CUSTOM", str(data / "reg.yaml"),
            "DATASETS.TRAIN", "('custom_unseen_test_train',)"]  # fmt: skip
    none = load_config(str(ROOT / "configs/toy/lseg_toyrn_400_bs8.yaml"),
                       opts + ["MODEL.OVSEG.ZERO_SHOT_SETTING", "none"])  # fmt: skip
    assert "custom_unseen_test_train's unseen classes ['c'] are trained on" in (
        trained_unseen_warning(none)
    )
    inductive = load_config(str(ROOT / "configs/toy/lseg_toyrn_400_bs8.yaml"), opts)
    assert inductive.MODEL.OVSEG.ZERO_SHOT_SETTING == "inductive"
    assert trained_unseen_warning(inductive) == ""
    # the official protocols that read unseen labels only to locate the pixels
    plus = load_config(
        str(ROOT / "configs/toy/maskclip_plus_toyrn_r18_transductive_300+300_bs16.yaml"), opts
    )
    assert plus.MODEL.OVSEG.ZERO_SHOT_SETTING == "none" and trained_unseen_warning(plus) == ""
    free = load_config(
        str(ROOT / "configs/toy/maskclip_plus_toyrn_r18_transductive_300+300_bs16.yaml"),
        opts + ["MODEL.MASKCLIP_PLUS.ANNOTATION_FREE", "True",
                "MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_PIXELS", "ignore"],
    )  # fmt: skip
    assert trained_unseen_warning(free) == ""  # reads no ground truth
