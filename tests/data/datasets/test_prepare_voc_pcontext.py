"""VOC-20 (train / train_aug / val) and PASCAL Context-59/60 from the official raw layouts.

Fixtures are tiny files in the layouts the real downloads unpack to: VOC's palette PNGs and
``ImageSets`` lists, mmsegmentation's grey ``SegmentationClassAug`` and DeepLab's
``train_aug.txt``, PASCAL in Detail's ``trainval_merged.json`` (COCO RLE strings, written by
an encoder that follows COCO's ``maskApi.c``) and PASCAL Context's ``.mat`` LabelMaps.
Expected labels are worked out by hand.
"""

import json
import shutil

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data.datasets import register_pcontext, register_voc
from ovseg.data.datasets.common import datasets_root
from ovseg.vocab import Vocabulary

TRAIN, TRAIN_BG_ONLY, VAL = "2007_000032", "2007_000039", "2007_000033"
SBD_ONLY, SBD_BG_ONLY = "2008_000123", "2008_000200"


@pytest.fixture
def reregister():
    """Register VOC and PASCAL Context under a test root; the real root back afterwards."""
    register_all = (register_voc.register_all_voc, register_pcontext.register_all_pcontext)
    yield lambda root: [register(str(root)) for register in register_all]
    for register in register_all:
        register(datasets_root())


def _stems(folder):
    return sorted(p.stem for p in folder.glob("*.png"))


# ---------------------------------------------------------------------------- VOC 2012
def _voc(tmp_path, raw):
    """VOC 2012 + mmsegmentation's SegmentationClassAug (SBD images only, grey, no 255)."""
    voc = tmp_path / "VOCdevkit/VOC2012"
    for stem in (TRAIN, TRAIN_BG_ONLY, VAL, SBD_ONLY, SBD_BG_ONLY):
        raw.jpg(voc / f"JPEGImages/{stem}.jpg", 2, 3)
    raw.png(voc / f"SegmentationClass/{TRAIN}.png", [[0, 1, 15], [20, 255, 0]], palette=True)
    raw.png(voc / f"SegmentationClass/{TRAIN_BG_ONLY}.png", [[0, 0, 0], [0, 255, 0]], palette=True)
    raw.png(voc / f"SegmentationClass/{VAL}.png", [[16, 16, 0], [255, 19, 0]], palette=True)
    aug = voc / "SegmentationClassAug"
    raw.png(aug / f"{TRAIN}.png", [[3, 3, 3], [3, 3, 3]])  # SBD's label of a VOC train image
    raw.png(aug / f"{VAL}.png", [[4, 4, 4], [4, 4, 4]])  # SBD also labels VOC val images
    raw.png(aug / f"{SBD_ONLY}.png", [[0, 12, 12], [7, 7, 0]])
    raw.png(aug / f"{SBD_BG_ONLY}.png", [[0, 0, 0], [0, 0, 0]])
    raw.lines(voc / "ImageSets/Segmentation/train.txt", [TRAIN, TRAIN_BG_ONLY])
    raw.lines(voc / "ImageSets/Segmentation/val.txt", [VAL])
    return voc


def test_voc_train_aug_val_each_from_their_own_labels(tmp_path, raw, read, prepare_script):
    script = prepare_script("prepare_voc_sem_seg")
    voc = _voc(tmp_path, raw)
    script.main(["--root", str(tmp_path)])  # no aug list: the SegmentationClassAug names
    out = voc / "annotations_detectron2"
    assert _stems(out / "train") == [TRAIN]  # background only: in no split (SAN / CAT-Seg)
    assert _stems(out / "val") == [VAL]
    # val is VOC's own SegmentationClass, never SBD's label of the same image
    np.testing.assert_array_equal(read(out / f"val/{VAL}.png"), [[15, 15, 255], [255, 18, 255]])
    # VOC-21 keeps the background as class 0 and the classes' own ids
    np.testing.assert_array_equal(read(out / f"val21/{VAL}.png"), [[16, 16, 0], [255, 19, 0]])
    # aug = (SBD names + VOC train) - VOC val; every listed image kept, as mmsegmentation does
    assert _stems(out / "train_aug") == sorted([TRAIN, TRAIN_BG_ONLY, SBD_ONLY, SBD_BG_ONLY])
    # a VOC train image keeps VOC's label (mmsegmentation's train.txt + aug.txt concatenation)
    np.testing.assert_array_equal(
        read(out / f"train_aug/{TRAIN}.png"), read(out / f"train/{TRAIN}.png")
    )
    np.testing.assert_array_equal(
        read(out / f"train_aug/{SBD_ONLY}.png"), [[255, 11, 11], [6, 6, 255]]
    )
    assert (read(out / f"train_aug/{TRAIN_BG_ONLY}.png") == 255).all()
    assert (read(out / f"train_aug/{SBD_BG_ONLY}.png") == 255).all()


def test_voc_aug_lists_in_deeplab_and_mmseg_form(tmp_path, raw, prepare_script, capsys):
    script = prepare_script("prepare_voc_sem_seg")
    voc = _voc(tmp_path, raw)
    lists = voc / "ImageSets/Segmentation"
    # DeepLab's train_aug.txt: two paths per line (it holds VOC train images too)
    raw.lines(
        lists / "train_aug.txt",
        [f"/JPEGImages/{s}.jpg /SegmentationClassAug/{s}.png" for s in (TRAIN, SBD_ONLY)],
    )
    script.main(["--root", str(tmp_path)])
    out = voc / "annotations_detectron2/train_aug"
    assert _stems(out) == sorted([TRAIN, TRAIN_BG_ONLY, SBD_ONLY])
    assert "train_aug: 3 images from" in capsys.readouterr().out

    # mmsegmentation's trainaug.txt is preferred; a list holding a val image loses it
    for path in out.iterdir():
        path.unlink()
    raw.lines(lists / "trainaug.txt", [SBD_BG_ONLY, VAL])
    script.main(["--root", str(tmp_path)])
    assert _stems(out) == sorted([TRAIN, TRAIN_BG_ONLY, SBD_BG_ONLY])
    assert "(1 VOC val images left out)" in capsys.readouterr().out

    # an explicit list anywhere, relative paths resolved under VOC2012/ too
    for path in out.iterdir():
        path.unlink()
    raw.lines(tmp_path / "mine.txt", [SBD_ONLY])
    script.main(["--root", str(tmp_path), "--aug-list", str(tmp_path / "mine.txt")])
    assert _stems(out) == sorted([TRAIN, TRAIN_BG_ONLY, SBD_ONLY])
    script.main(["--root", str(tmp_path), "--aug-list", "ImageSets/Segmentation/train_aug.txt"])


def test_voc_aug_skipped_or_failing_with_the_path(tmp_path, raw, prepare_script, capsys):
    script = prepare_script("prepare_voc_sem_seg")
    voc = _voc(tmp_path, raw)
    script.main(["--root", str(tmp_path), "--no-aug"])
    assert not (voc / "annotations_detectron2/train_aug").exists()
    with pytest.raises(FileNotFoundError, match="aug list not found: nowhere.txt"):
        script.main(["--root", str(tmp_path), "--aug-list", "nowhere.txt"])
    raw.lines(voc / "ImageSets/Segmentation/trainaug.txt", ["2011_000001"])
    with pytest.raises(FileNotFoundError, match=r"SegmentationClassAug/2011_000001\.png"):
        script.main(["--root", str(tmp_path)])
    raw.lines(voc / "ImageSets/Segmentation/trainaug.txt", [f"/JPEGImages/{TRAIN}.jpg /x/y.png"])
    with pytest.raises(ValueError, match="names two different images"):
        script.main(["--root", str(tmp_path)])
    (voc / "ImageSets/Segmentation/trainaug.txt").unlink()
    for path in (voc / "SegmentationClassAug").iterdir():
        path.unlink()
    (voc / "SegmentationClassAug").rmdir()
    capsys.readouterr()
    script.main(["--root", str(tmp_path)])  # VOC alone: train and val, train_aug skipped
    assert "train_aug skipped: no" in capsys.readouterr().out


def test_voc_train_aug_registered_and_loaded(tmp_path, raw, read, prepare_script, reregister):
    reregister(tmp_path)
    meta = MetadataCatalog.get("voc_sem_seg_train_aug")
    val = MetadataCatalog.get("voc_sem_seg_val")
    assert meta.stuff_classes == val.stuff_classes and meta.unseen_classes == val.unseen_classes
    assert meta.evaluator_type == val.evaluator_type == "ovseg_sem_seg"
    assert meta.ignore_label == 255 and meta.vocabulary_name == "voc20"
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("voc_sem_seg_train_aug")
    assert meta.sem_seg_root in str(err.value) and "train_aug" in meta.sem_seg_root
    assert "prepare_voc_sem_seg.py with SegmentationClassAug" in str(err.value)

    voc = _voc(tmp_path, raw)
    prepare_script("prepare_voc_sem_seg").main(["--root", str(tmp_path)])
    dicts = DatasetCatalog.get("voc_sem_seg_train_aug")
    assert [d["image_id"] for d in dicts] == sorted([TRAIN, TRAIN_BG_ONLY, SBD_ONLY, SBD_BG_ONLY])
    assert dicts[2]["file_name"] == str(voc / f"JPEGImages/{SBD_ONLY}.jpg")
    assert [d["image_id"] for d in DatasetCatalog.get("voc_sem_seg_val")] == [VAL]
    voc21 = MetadataCatalog.get("voc21_sem_seg_val")
    assert voc21.stuff_classes == ["background", *val.stuff_classes]
    assert voc21.unseen_classes == val.unseen_classes
    assert [d["image_id"] for d in DatasetCatalog.get("voc21_sem_seg_val")] == [VAL]


def test_voc_train_aug_base_is_freeseg_seen_only_split(
    tmp_path, raw, read, prepare_script, reregister
):
    voc = _voc(tmp_path, raw)
    # an SBD image whose only objects are unseen (sheep 17 -> 16, sofa 18 -> 17)
    raw.jpg(voc / "JPEGImages/2008_000300.jpg", 2, 3)
    raw.png(voc / "SegmentationClassAug/2008_000300.png", [[0, 17, 17], [18, 0, 0]])
    prepare_script("prepare_voc_sem_seg").main(["--root", str(tmp_path)])
    out = voc / "annotations_detectron2"
    # kept: images with a seen pixel; unseen-only and background-only images left out
    assert _stems(out / "train_aug_base") == sorted([TRAIN, SBD_ONLY])
    # VOC train label [[0, 1, 15], [20, 255, 0]] -> ids 0, 14 seen; 19 (tv monitor) ignored
    np.testing.assert_array_equal(
        read(out / f"train_aug_base/{TRAIN}.png"), [[255, 0, 14], [255, 255, 255]]
    )
    np.testing.assert_array_equal(
        read(out / f"train_aug_base/{SBD_ONLY}.png"), read(out / f"train_aug/{SBD_ONLY}.png")
    )
    # the classes per file that FreeSeg's prompt stage reads (ovseg.data.label_counts)
    counts = json.loads((out / "train_aug_base_label_count.json").read_text())
    assert sorted(counts) == sorted(f"{s}.png" for s in (TRAIN, SBD_ONLY))
    assert counts[f"{TRAIN}.png"] == [0, 14]
    reregister(tmp_path)
    meta = MetadataCatalog.get("voc_sem_seg_train_aug_base")
    assert meta.stuff_classes == MetadataCatalog.get("voc_sem_seg_val").stuff_classes
    assert meta.unseen_classes == ["potted plant", "sheep", "sofa", "train", "tv monitor"]
    dicts = DatasetCatalog.get("voc_sem_seg_train_aug_base")
    assert [d["image_id"] for d in dicts] == sorted([TRAIN, SBD_ONLY])


# ----------------------------------------------------------------- COCO RLE (Detail json)
def rle_encode(mask):
    """COCO's compressed RLE of a (H, W) bool mask (maskApi.c rleEncode + rleToString)."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    runs, value, count = [], False, 0
    for v in flat:
        if v != value:
            runs.append(count)
            value, count = v, 0
        count += 1
    runs.append(count)
    chars = []
    for i, x in enumerate(runs):
        x = x - runs[i - 2] if i > 2 else x
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return {"size": list(np.shape(mask)), "counts": "".join(chars)}


def test_rle_decode_matches_pycocotools_and_refuses_polygons(prepare_script):
    utils = prepare_script("prepare_utils")
    rng = np.random.default_rng(0)
    for height, width, p in ((1, 1, 0.5), (7, 5, 0.0), (7, 5, 1.0), (40, 33, 0.3), (375, 500, 0.9)):
        mask = rng.random((height, width)) < p
        mask[height // 3 :, : width // 2] = True  # long runs: multi-character deltas
        rle = rle_encode(mask)
        np.testing.assert_array_equal(utils.rle_decode_python(rle, "x"), mask)
        np.testing.assert_array_equal(utils.rle_decode(rle, "x"), mask)
        runs = {"size": [height, width], "counts": utils._rle_string_counts(rle["counts"])}
        np.testing.assert_array_equal(utils.rle_decode(runs, "x"), mask)
    pycocotools_mask = pytest.importorskip("pycocotools.mask")
    mask = rng.random((31, 17)) < 0.4
    assert rle_encode(mask)["counts"] == pycocotools_mask.encode(
        np.asfortranarray(mask.astype(np.uint8))
    )["counts"].decode("ascii")
    with pytest.raises(ValueError, match="ann 7: expected an RLE mask"):
        utils.rle_decode([[0.0, 0.0, 1.0, 0.0, 1.0, 1.0]], "ann 7")
    with pytest.raises(ValueError, match="cover 6 pixels.*size is 2x2"):
        utils.rle_decode_python({"size": [2, 2], "counts": [1, 5]}, "ann 8")


# --------------------------------------------------------------------- PASCAL Context
TRAIN_PC, VAL_PC, TEST_PC, DROPPED = "2008_000008", "2008_000002", "2008_000001", "2008_000003"


def _detail_json(path, images):
    """A trainval_merged.json in PASCAL in Detail's layout: ``images`` maps stem ->
    (phase, [(category_id, (H, W) mask), ...] in file order)."""
    data = {"info": {}, "images": [], "annos_segmentation": [], "annos_occlusion": [],
            "annos_boundary": [], "annos_joints": [], "parts": [], "categories": []}  # fmt: skip
    for stem, (phase, masks) in images.items():
        image_id = int(stem.replace("_", ""))
        height, width = masks[0][1].shape
        data["images"].append({"file_name": f"{stem}.jpg", "image_id": image_id,
                               "phase": phase, "height": height, "width": width})  # fmt: skip
        for category, mask in masks:
            data["annos_segmentation"].append(
                {
                    "id": len(data["annos_segmentation"]) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": rle_encode(mask),
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "parts": [],
                }  # fmt: skip
            )
    for category in (1, 2, 9, 284, 368, 397, 440, 458):
        data["categories"].append({"category_id": category, "name": f"c{category}"})
    path.write_text(json.dumps(data))
    return path


def _context(tmp_path, raw):
    voc = tmp_path / "VOCdevkit/VOC2010"
    for stem in (TRAIN_PC, VAL_PC, TEST_PC, DROPPED):
        raw.jpg(voc / f"JPEGImages/{stem}.jpg", 2, 3)
    top = np.array([[1, 1, 1], [0, 0, 0]], dtype=bool)
    left = np.array([[1, 1, 0], [1, 1, 0]], dtype=bool)
    _detail_json(voc / "trainval_merged.json", {
        # person (284) on the top row, then sofa (368) on the left: sofa wins where both lie
        VAL_PC: ("val", [(284, top), (368, left)]),
        # wall (440) everywhere, accordion (1, not among the 59) on the left
        TRAIN_PC: ("train", [(440, np.ones((2, 3), bool)), (1, left)]),
        TEST_PC: ("test", [(2, top)]),
    })  # fmt: skip
    raw.mat(voc / f"trainval/{VAL_PC}.mat", [[0, 2, 397], [458, 1, 9]])
    raw.mat(voc / f"trainval/{TRAIN_PC}.mat", [[440, 440, 440], [284, 284, 284]])
    raw.mat(voc / f"trainval/{DROPPED}.mat", [[2, 2, 2], [2, 2, 2]])
    # VOC 2010's own lists hold one image more than the json's phases (5,105 vs 5,104)
    raw.lines(voc / "ImageSets/Main/train.txt", [TRAIN_PC])
    raw.lines(voc / "ImageSets/Main/val.txt", [VAL_PC, DROPPED])
    return voc


def test_pcontext_59_and_60_from_the_detail_json(tmp_path, raw, read, prepare_script, capsys):
    script = prepare_script("prepare_pcontext_sem_seg")
    voc = _context(tmp_path, raw)
    script.main(["--root", str(tmp_path)])
    out = voc / "annotations_detectron2"
    # splits are the json's phases: the test phase and the image it lacks are in none
    for name in ("pc59", "pc60"):
        assert _stems(out / f"{name}_train") == [TRAIN_PC]
        assert _stems(out / f"{name}_val") == [VAL_PC]
    assert f"1 images only in {voc / 'ImageSets/Main/val.txt'}: ['{DROPPED}']" in (
        capsys.readouterr().out
    )
    # sofa 368 -> 48, person 284 -> 36, no mask -> 255 (PC-59) / background 0 (PC-60)
    np.testing.assert_array_equal(
        read(out / f"pc59_val/{VAL_PC}.png"), [[48, 48, 36], [48, 48, 255]]
    )
    np.testing.assert_array_equal(read(out / f"pc60_val/{VAL_PC}.png"), [[49, 49, 37], [49, 49, 0]])
    # wall 440 -> 55; accordion 1 is none of the 59: ignore / background
    np.testing.assert_array_equal(
        read(out / f"pc59_train/{TRAIN_PC}.png"), [[255, 255, 55], [255, 255, 55]]
    )
    np.testing.assert_array_equal(
        read(out / f"pc60_train/{TRAIN_PC}.png"), [[0, 0, 56], [0, 0, 56]]
    )
    assert (out / "pcontext_label_source.txt").read_text() == "json\n"


def test_pcontext_mat_fallback_and_no_mixing_of_sources(tmp_path, raw, read, prepare_script):
    script = prepare_script("prepare_pcontext_sem_seg")
    voc = _context(tmp_path, raw)
    out = voc / "annotations_detectron2"
    # explicit .mat labels with the json present: the json's phases still give the splits
    script.main(["--root", str(tmp_path), "--labels", "mat"])
    assert _stems(out / "pc59_val") == [VAL_PC]
    # 0 -> 255 / 0; aeroplane 2 -> 0 / 1; table 397 -> 49 / 50; wood 458 -> 58 / 59; bag 9 -> 1
    np.testing.assert_array_equal(
        read(out / f"pc59_val/{VAL_PC}.png"), [[255, 0, 49], [58, 255, 1]]
    )
    np.testing.assert_array_equal(read(out / f"pc60_val/{VAL_PC}.png"), [[0, 1, 50], [59, 0, 2]])
    # the json now: labels converted from the .mat must not be kept silently
    with pytest.raises(RuntimeError, match="converted from the mat source.*--overwrite"):
        script.main(["--root", str(tmp_path)])
    script.main(["--root", str(tmp_path), "--overwrite"])
    np.testing.assert_array_equal(read(out / f"pc60_val/{VAL_PC}.png"), [[49, 49, 37], [49, 49, 0]])

    # no json: .mat labels and VOC 2010's lists (as ovseg did before)
    (voc / "trainval_merged.json").unlink()
    with pytest.raises(RuntimeError, match="converted from the json source"):
        script.main(["--root", str(tmp_path)])
    script.main(["--root", str(tmp_path), "--overwrite"])
    assert _stems(out / "pc60_val") == sorted([VAL_PC, DROPPED])
    np.testing.assert_array_equal(read(out / f"pc60_val/{DROPPED}.png"), np.ones((2, 3)))
    with pytest.raises(FileNotFoundError, match="PASCAL in Detail trainval_merged.json not"):
        script.main(["--root", str(tmp_path), "--labels", "json"])


def test_pcontext_errors_name_the_file(tmp_path, raw, prepare_script):
    script = prepare_script("prepare_pcontext_sem_seg")
    voc = _context(tmp_path, raw)
    raw.lines(voc / "lists/train.txt", [TRAIN_PC])
    raw.lines(voc / "lists/val.txt", ["2010_999999"])
    with pytest.raises(KeyError, match="has no image '2010_999999' \\(val list\\)"):
        script.main(["--root", str(tmp_path), "--split-dir", "lists"])
    bad = _detail_json(tmp_path / "bad.json", {VAL_PC: ("val", [(460, np.ones((2, 3), bool))])})
    with pytest.raises(ValueError, match="bad.json: annotation 1 of .*category_id 460"):
        script.main(["--root", str(tmp_path), "--json", str(bad)])
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(KeyError, match="no 'annos_segmentation'.*trainval_merged.json"):
        script.main(["--root", str(tmp_path), "--json", str(tmp_path / "other.json")])


def test_pcontext60_vocabulary_and_registration(tmp_path, raw, read, prepare_script, reregister):
    pc59, pc60 = Vocabulary.builtin("pc59"), Vocabulary.builtin("pc60")
    assert pc60.names == ("background", *pc59.names) and set(pc60.unseen) == set(pc59.unseen)
    # MaskCLIP+'s zero-shot Context config suppresses these PC-60 ids
    unseen_ids = [20, 34, 49, 15, 8, 25, 7, 55, 32, 1]  # cow, motorbike, sofa, cat, boat, ...
    assert {pc60.names[i] for i in unseen_ids} == set(pc60.unseen)
    assert pc60.names[20] == "cow" and pc60.names[55] == "tv monitor"

    reregister(tmp_path)
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"pcontext60_sem_seg_{split}")
        assert meta.stuff_classes == list(pc60.names) and meta.vocabulary_name == "pc60"
        assert meta.ignore_label == 255 and meta.evaluator_type == "ovseg_sem_seg"
        assert "background" in meta.seen_classes and len(meta.unseen_classes) == 10
    with pytest.raises(FileNotFoundError, match="pc60_val.*prepare_pcontext_sem_seg.py"):
        DatasetCatalog.get("pcontext60_sem_seg_val")
    voc = _context(tmp_path, raw)
    prepare_script("prepare_pcontext_sem_seg").main(["--root", str(tmp_path)])
    for name in ("pcontext_sem_seg_val", "pcontext60_sem_seg_val"):
        dicts = DatasetCatalog.get(name)
        assert [d["image_id"] for d in dicts] == [VAL_PC]
        assert dicts[0]["file_name"] == str(voc / f"JPEGImages/{VAL_PC}.jpg")
    assert [d["image_id"] for d in DatasetCatalog.get("pcontext60_sem_seg_train")] == [TRAIN_PC]


def test_pcontext_459_splits_are_the_json_phases_like_pc59(tmp_path, raw, read, prepare_script):
    script = prepare_script("prepare_pcontext_full_sem_seg")
    voc = _context(tmp_path, raw)
    out = voc / "annotations_detectron2"
    script.main(["--root", str(tmp_path)])
    # the image VOC 2010's val list has and the json's val phase lacks is not converted
    assert _stems(out / "pc459_val") == [VAL_PC]
    assert _stems(out / "pc459_train") == [TRAIN_PC]
    # 0 -> ignore 65535, ids 1..459 -> 0..458
    np.testing.assert_array_equal(
        read(out / f"pc459_val/{VAL_PC}.png"), [[65535, 1, 396], [457, 0, 8]]
    )
    # an explicit list folder still wins; without the json, VOC 2010's lists are the splits
    shutil.rmtree(out)
    script.main(["--root", str(tmp_path), "--split-dir", "ImageSets/Main"])
    assert _stems(out / "pc459_val") == sorted([VAL_PC, DROPPED])
    shutil.rmtree(out)
    (voc / "trainval_merged.json").unlink()
    script.main(["--root", str(tmp_path)])
    assert _stems(out / "pc459_val") == sorted([VAL_PC, DROPPED])
