"""Every ``datasets/prepare_*.py`` on tiny fixtures written in the official raw layouts.

Expected label values are worked out by hand from the official id conventions.
"""

import numpy as np
import pytest

from detectron2.data.detection_utils import read_image


def _no_temp_files(folder):
    return not [p for p in folder.rglob("*") if p.name.startswith(".")]


# --------------------------------------------------------------------------- ADE20K-150
def test_ade20k_150(tmp_path, raw, read, prepare_script, capsys):
    script = prepare_script("prepare_ade20k_sem_seg")
    ade = tmp_path / "ADEChallengeData2016"
    for split, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        raw.jpg(ade / "images" / split / f"{stem}.jpg", 2, 3)
    raw.png(ade / "annotations/training/ADE_train_00000001.png", [[0, 1, 150], [2, 149, 0]])
    raw.png(ade / "annotations/validation/ADE_val_00000001.png", [[13, 13, 13], [0, 0, 1]])

    script.main(["--root", str(tmp_path)])
    out = ade / "annotations_detectron2"
    train = read(out / "training/ADE_train_00000001.png")
    assert train.dtype == np.uint8
    np.testing.assert_array_equal(train, [[255, 0, 149], [1, 148, 255]])
    np.testing.assert_array_equal(
        read(out / "validation/ADE_val_00000001.png"), [[12, 12, 12], [255, 255, 0]]
    )
    assert _no_temp_files(out)

    # a second run converts nothing: an existing output is kept even if it differs
    raw.png(out / "training/ADE_train_00000001.png", [[7, 7, 7], [7, 7, 7]])
    capsys.readouterr()
    script.main(["--root", str(tmp_path)])
    assert "0 converted, 1 already there" in capsys.readouterr().out
    assert (read(out / "training/ADE_train_00000001.png") == 7).all()


def test_ade20k_150_rejects_values_above_150(prepare_script):
    script = prepare_script("prepare_ade20k_sem_seg")
    with pytest.raises(ValueError, match=r"x\.png: unexpected label values \[151\]"):
        script.convert_ade20k_label(np.array([[151, 3]], dtype=np.uint8), "x.png")


def test_ade20k_150_missing_layout_names_path(tmp_path, prepare_script):
    script = prepare_script("prepare_ade20k_sem_seg")
    (tmp_path / "ADEChallengeData2016/images/training").mkdir(parents=True)
    missing = tmp_path / "ADEChallengeData2016/annotations/training"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        script.main(["--root", str(tmp_path)])


def test_ade20k_150_damaged_file_is_named_and_the_rest_kept(tmp_path, raw, prepare_script):
    script = prepare_script("prepare_ade20k_sem_seg")
    ade = tmp_path / "ADEChallengeData2016"
    raw.jpg(ade / "images/training/ADE_train_00000001.jpg", 2, 3)
    (ade / "images/validation").mkdir(parents=True)
    raw.png(ade / "annotations/training/ADE_train_00000001.png", [[0, 1, 150], [2, 149, 0]])
    cut = ade / "annotations/training/ADE_train_00000002.png"
    cut.write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # PIL: "Truncated File Read", naming no file
    with pytest.raises(OSError, match=f"{cut}: .*is the file damaged"):
        script.main(["--root", str(tmp_path)])
    out = ade / "annotations_detectron2/training"
    assert sorted(p.name for p in out.iterdir()) == ["ADE_train_00000001.png"]


@pytest.mark.parametrize(
    "name", ["prepare_ade20k_sem_seg", "prepare_voc_sem_seg", "prepare_fss1000"]
)
def test_scripts_report_a_missing_layout_in_one_line(tmp_path, name):
    import subprocess
    import sys

    from ovseg_testing import ROOT, subprocess_env

    proc = subprocess.run(
        [sys.executable, f"datasets/{name}.py", "--root", str(tmp_path)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{name}.py: error: " in proc.stderr and f"not found: {tmp_path}/" in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- ADE20K-847
def _ade_seg(classes, instance=9):
    """Encode ADE20K-Full class values as a *_seg.png: R = class // 256 * 10, G = class % 256."""
    classes = np.asarray(classes)
    seg = np.zeros(classes.shape + (3,), dtype=np.uint8)
    seg[..., 0] = classes // 256 * 10
    seg[..., 1] = classes % 256
    seg[..., 2] = instance  # instance ids live in B and must not matter
    return seg


def test_ade20k_full_decoding_and_mapping(prepare_script):
    script = prepare_script("prepare_ade20k_full_sem_seg")
    seg = _ade_seg([[2978, 1831, 3148, 0, 1]])
    seg[0, 1, 0] += 7  # R // 10 ignores the remainder: 77 // 10 == 7
    classes = script.decode_ade20k_full_classes(seg)
    np.testing.assert_array_equal(classes, [[2978, 1831, 3148, 0, 1]])
    # wall -> 0, person -> 11, adding machine -> 846, unlabelled and non-847 classes -> ignore
    label = script.convert_ade20k_full_label(classes)
    assert label.dtype == np.uint16
    np.testing.assert_array_equal(label, [[0, 11, 846, 65535, 65535]])
    assert script.resized_shape(520, 600) == (512, 591)
    assert script.resized_shape(600, 520) == (591, 512)
    assert script.resized_shape(512, 2000) is None


def test_ade20k_full(tmp_path, raw, read, prepare_script):
    script = prepare_script("prepare_ade20k_full_sem_seg")
    ade = tmp_path / "ADE20K_2021_17_01"
    val_dir = ade / "images/ADE/validation/cultural/apse_indoor"
    raw.jpg(val_dir / "ADE_val_00000001.jpg", 2, 3)
    raw.png(val_dir / "ADE_val_00000001_seg.png", _ade_seg([[2978, 2978, 0], [1831, 3148, 312]]))
    # taller than 512 on both sides: resized so the shorter side (width 520) becomes 512
    train_dir = ade / "images/ADE/training/urban/street"
    raw.jpg(train_dir / "ADE_train_00000001.jpg", 600, 520)
    classes = np.full((600, 520), 2978)
    classes[:300] = 312  # building on top, wall below
    raw.png(train_dir / "ADE_train_00000001_seg.png", _ade_seg(classes))

    script.main(["--root", str(tmp_path)])
    val = read(ade / "annotations_detectron2/validation/ADE_val_00000001.png")
    assert val.dtype == np.uint16
    np.testing.assert_array_equal(val, [[0, 0, 65535], [11, 846, 1]])
    assert (ade / "images_detectron2/validation/ADE_val_00000001.jpg").is_file()

    train = read(ade / "annotations_detectron2/training/ADE_train_00000001.png")
    assert train.shape == (591, 512)
    assert set(np.unique(train[:290]).tolist()) == {1} and set(np.unique(train[300:])) == {0}
    image = read_image(str(ade / "images_detectron2/training/ADE_train_00000001.jpg"))
    assert image.shape == (591, 512, 3)
    # detectron2's reader keeps the 16-bit ids (what the mappers will see)
    as_read = read_image(str(ade / "annotations_detectron2/validation/ADE_val_00000001.png"))
    assert int(as_read.max()) == 65535 and 846 in as_read
    assert _no_temp_files(ade / "annotations_detectron2")


def test_ade20k_full_small_images_are_re_encoded_as_the_official_script(
    tmp_path, raw, prepare_script
):
    """CAT-Seg's prepare_ade20k_full.py saves every image through PIL (quality 75), resized
    or not: a small image is re-encoded, not copied byte for byte; grey stays grey."""
    import io

    from PIL import Image

    script = prepare_script("prepare_ade20k_full_sem_seg")
    ade = tmp_path / "ADE20K_2021_17_01"
    folder = ade / "images/ADE/validation/a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    sources = {
        "ADE_val_00000003": Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)),
        "ADE_val_00000004": Image.fromarray(rng.integers(0, 256, (16, 24), dtype=np.uint8)),
    }
    for stem, image in sources.items():
        image.save(folder / f"{stem}.jpg", format="JPEG", quality=95)
        raw.png(folder / f"{stem}_seg.png", _ade_seg(np.full((16, 24), 2978)))
    (ade / "images/ADE/training").mkdir(parents=True)
    raw.jpg(ade / "images/ADE/training/a/ADE_train_00000003.jpg", 4, 4)
    raw.png(ade / "images/ADE/training/a/ADE_train_00000003_seg.png", _ade_seg(np.zeros((4, 4))))

    script.main(["--root", str(tmp_path)])
    for stem in sources:
        src = folder / f"{stem}.jpg"
        out = ade / "images_detectron2/validation" / f"{stem}.jpg"
        assert out.read_bytes() != src.read_bytes()
        with Image.open(src) as decoded:
            again = io.BytesIO()
            decoded.save(again, format="JPEG")  # what Image.fromarray(img).save(...) writes
        with Image.open(again) as want, Image.open(out) as got:
            assert got.mode == want.mode
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_ade20k_full_missing_seg_png_names_it(tmp_path, raw, prepare_script):
    script = prepare_script("prepare_ade20k_full_sem_seg")
    ade = tmp_path / "ADE20K_2021_17_01"
    raw.jpg(ade / "images/ADE/training/a/ADE_train_00000002.jpg")
    raw.jpg(ade / "images/ADE/validation/a/ADE_val_00000002.jpg")
    with pytest.raises(FileNotFoundError, match="ADE_train_00000002_seg.png"):
        script.main(["--root", str(tmp_path)])


# --------------------------------------------------------------------------- COCO-Stuff
def test_coco_stuff(tmp_path, raw, read, prepare_script):
    script = prepare_script("prepare_coco_stuff_sem_seg")
    coco = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        raw.jpg(coco / split / "000000000009.jpg", 2, 4)
    raw.png(
        coco / "stuffthingmaps/train2017/000000000009.png", [[0, 11, 12, 90], [91, 181, 255, 1]]
    )
    raw.png(coco / "stuffthingmaps/val2017/000000000009.png", [[66, 67, 68, 69], [70, 71, 0, 0]])

    script.main(["--root", str(tmp_path)])
    out = coco / "stuffthingmaps_detectron2"
    # person 0 -> 0; 11 and 90 are unused ids -> 255; 12 (stop sign) -> 11; banner 91 -> 80;
    # wood 181 -> 170; 255 stays ignore
    np.testing.assert_array_equal(
        read(out / "train2017/000000000009.png"), [[0, 255, 11, 255], [80, 170, 255, 1]]
    )
    # dining table 66 -> 60; 67, 68 and 70 unused -> 255; toilet 69 -> 61; tv 71 -> 62
    np.testing.assert_array_equal(
        read(out / "val2017/000000000009.png"), [[60, 255, 255, 61], [255, 62, 0, 0]]
    )


def test_coco_stuff_rejects_out_of_range_values(prepare_script):
    script = prepare_script("prepare_coco_stuff_sem_seg")
    label = script.convert_coco_stuff_label(np.arange(182, dtype=np.uint8)[None], "ok.png")
    assert sorted(set(label.ravel().tolist()) - {255}) == list(range(171))
    with pytest.raises(ValueError, match=r"bad\.png: unexpected label values \[182, 200\]"):
        script.convert_coco_stuff_label(np.array([[182, 200, 4]], dtype=np.uint8), "bad.png")


# ---------------------------------------------------------------------------- VOC 2012
def _voc_fixture(tmp_path, raw, labels="SegmentationClass"):
    voc = tmp_path / "VOCdevkit/VOC2012"
    for stem in ("2007_000032", "2007_000033", "2007_000039"):
        raw.jpg(voc / f"JPEGImages/{stem}.jpg", 2, 3)
    raw.png(voc / labels / "2007_000032.png", [[0, 1, 15], [20, 255, 0]], palette=True)
    raw.png(voc / labels / "2007_000033.png", [[16, 16, 0], [255, 19, 0]], palette=True)
    raw.png(voc / labels / "2007_000039.png", [[0, 0, 0], [0, 255, 0]], palette=True)
    raw.lines(voc / "ImageSets/Segmentation/train.txt", ["2007_000032", "2007_000039"])
    raw.lines(voc / "ImageSets/Segmentation/val.txt", ["2007_000033"])
    return voc


def test_voc(tmp_path, raw, read, prepare_script):
    script = prepare_script("prepare_voc_sem_seg")
    voc = _voc_fixture(tmp_path, raw)
    script.main(["--root", str(tmp_path)])
    out = voc / "annotations_detectron2"
    # background 0 and boundary 255 -> 255; aeroplane 1 -> 0; person 15 -> 14; tv 20 -> 19
    np.testing.assert_array_equal(
        read(out / "train/2007_000032.png"), [[255, 0, 14], [19, 255, 255]]
    )
    np.testing.assert_array_equal(
        read(out / "val/2007_000033.png"), [[15, 15, 255], [255, 18, 255]]
    )
    # background only: nothing labelled for VOC-20, so no label file (and no sample)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["2007_000032.png"]


def test_voc_listed_label_missing_names_it(tmp_path, raw, prepare_script):
    script = prepare_script("prepare_voc_sem_seg")
    voc = _voc_fixture(tmp_path, raw)
    raw.lines(voc / "ImageSets/Segmentation/val.txt", ["2007_000033", "2099_000001"])
    with pytest.raises(FileNotFoundError, match=r"SegmentationClass/2099_000001\.png"):
        script.main(["--root", str(tmp_path)])


# ------------------------------------------------------------------------ PASCAL Context
def _context_fixture(tmp_path, raw):
    voc = tmp_path / "VOCdevkit/VOC2010"
    for stem in ("2008_000002", "2008_000003", "2008_000007"):
        raw.jpg(voc / f"JPEGImages/{stem}.jpg", 2, 3)
    raw.mat(voc / "trainval/2008_000002.mat", [[0, 2, 397], [458, 1, 459]])
    raw.mat(voc / "trainval/2008_000003.mat", [[284, 284, 440], [368, 427, 9]])
    raw.mat(voc / "trainval/2008_000007.mat", [[1, 1, 1], [1, 1, 1]])  # not in any list
    raw.lines(voc / "ImageSets/Main/train.txt", ["2008_000002"])
    raw.lines(voc / "ImageSets/Main/val.txt", ["2008_000003"])
    return voc


def test_pcontext_59(tmp_path, raw, read, prepare_script):
    script = prepare_script("prepare_pcontext_sem_seg")
    voc = _context_fixture(tmp_path, raw)
    script.main(["--root", str(tmp_path)])
    out = voc / "annotations_detectron2"
    # 0 unlabelled -> 255; aeroplane 2 -> 0; table 397 -> 49 ("dining table"); wood 458 -> 58;
    # accordion 1 and 459 are not among the 59 -> 255
    np.testing.assert_array_equal(
        read(out / "pc59_train/2008_000002.png"), [[255, 0, 49], [58, 255, 255]]
    )
    # person 284 -> 36; wall 440 -> 55; sofa 368 -> 48; tv monitor 427 -> 54; bag 9 -> 1
    np.testing.assert_array_equal(
        read(out / "pc59_val/2008_000003.png"), [[36, 36, 55], [48, 54, 1]]
    )
    # PC-60 is written beside PC-59 (its labels: test_prepare_voc_pcontext.py), and the
    # label source is recorded so a later conversion never mixes json and .mat labels
    assert sorted(p.name for p in out.iterdir()) == [
        "pc59_train", "pc59_val", "pc60_train", "pc60_val", "pcontext_label_source.txt"
    ]  # fmt: skip
    assert (out / "pcontext_label_source.txt").read_text().strip() == "mat"


def test_pcontext_459(tmp_path, raw, read, prepare_script):
    script = prepare_script("prepare_pcontext_full_sem_seg")
    voc = _context_fixture(tmp_path, raw)
    script.main(["--root", str(tmp_path)])
    train = read(voc / "annotations_detectron2/pc459_train/2008_000002.png")
    assert train.dtype == np.uint16
    np.testing.assert_array_equal(train, [[65535, 1, 396], [457, 0, 458]])
    np.testing.assert_array_equal(
        read(voc / "annotations_detectron2/pc459_val/2008_000003.png"),
        [[283, 283, 439], [367, 426, 8]],
    )


def test_pcontext_errors(tmp_path, raw, prepare_script):
    script = prepare_script("prepare_pcontext_full_sem_seg")
    voc = _context_fixture(tmp_path, raw)
    raw.lines(voc / "ImageSets/Main/val.txt", ["2008_000003", "2008_009999"])
    with pytest.raises(FileNotFoundError, match=r"trainval/2008_009999\.mat"):
        script.main(["--root", str(tmp_path)])
    with pytest.raises(ValueError, match=r"unexpected label values \[460\]"):
        script.convert_pcontext_full_label(np.array([[460, 3]], dtype=np.uint16), "x.mat")
    raw_mat = tmp_path / "other.mat"
    import scipy.io

    scipy.io.savemat(str(raw_mat), {"GTcls": np.zeros((2, 2))})
    with pytest.raises(KeyError, match="has no 'LabelMap'"):
        script.load_label_map(raw_mat)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "VOCdevkit")):
        script.main(["--root", str(tmp_path / "nowhere")])
