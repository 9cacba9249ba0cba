"""The panoptic / instance prepare scripts on tiny files in the official layouts."""

import json

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog

from ovseg.data.datasets.categories import (
    COCO_PANOPTIC_CATEGORIES,
    COCO_STUFF_CATEGORIES,
    COCO_UNSEEN_IDS,
)
from ovseg.data.datasets.common import datasets_root
from ovseg.data.datasets.register_coco_panoptic import register_all_coco_panoptic
from ovseg.evaluation.panoptic_quality import id2rgb, rgb2id

S = 156 * 65793  # FreeSeg's id of the sky-other segment (stuffthingmap value 156)
T = 168 * 65793  # tree (168)


def _index(cat_id, base=False):
    cats = [c for c in COCO_STUFF_CATEGORIES if not base or c["id"] not in COCO_UNSEEN_IDS]
    return [c["id"] for c in cats].index(cat_id)


def _coco_raw(root, raw):
    coco = root / "coco"
    stuffmaps = {
        "000000000001": [[0, 0, 156, 156], [20, 156, 255, 168]],
        "000000000002": [[255, 255, 255, 255], [255, 255, 255, 255]],  # nothing labelled
    }
    pan = np.array([[10, 10, 30, 30], [20, 30, 0, 40]])
    segs = [(10, 1), (20, 21), (30, 187), (40, 184)]  # person, cow, sky-other-m, tree-m
    annotations, images = [], []
    for i, (stem, smap) in enumerate(stuffmaps.items(), start=1):
        for split in ("train2017", "val2017"):
            raw.png(coco / "stuffthingmaps" / split / f"{stem}.png", smap)
            (coco / f"panoptic_{split}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(id2rgb(pan)).save(coco / f"panoptic_{split}" / f"{stem}.png")
        images.append({"id": i, "file_name": f"{stem}.jpg", "height": 2, "width": 4})
        info = [{"id": s, "category_id": c, "iscrowd": 0, "area": 1} for s, c in segs]
        annotations.append({"image_id": i, "file_name": f"{stem}.png", "segments_info": info})
    data = {"images": images, "annotations": annotations, "categories": []}
    for split in ("train2017", "val2017"):
        (coco / "annotations").mkdir(parents=True, exist_ok=True)
        (coco / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(data))
    return coco


def test_coco_full_task_and_base(tmp_path, raw, read, prepare_script):
    coco = _coco_raw(tmp_path, raw)
    prepare_script("prepare_coco_panoptic").main(["--root", str(tmp_path)])
    out = coco / "panoptic_detectron2"
    full = rgb2id(read(out / "val2017/000000000001.png"))
    np.testing.assert_array_equal(full, [[10, 10, S, S], [20, S, 0, T]])
    base = rgb2id(read(out / "val2017_base/000000000001.png"))
    np.testing.assert_array_equal(base, [[10, 10, S, S], [0, S, 0, 0]])
    sky, cow, tree = _index(157), _index(21), _index(169)
    np.testing.assert_array_equal(
        read(coco / "stuffthingmaps_panoptic_detectron2/val2017/000000000001.png"),
        [[0, 0, sky, sky], [cow, sky, 255, tree]],
    )
    sky_b = _index(157, base=True)
    np.testing.assert_array_equal(
        read(coco / "stuffthingmaps_panoptic_detectron2/val2017_base/000000000001.png"),
        [[0, 0, sky_b, sky_b], [255, sky_b, 255, 255]],
    )
    # the all-ignore image is left out everywhere
    assert not (out / "val2017/000000000002.png").exists()
    # the prompt stage's training folder has its classes per file (train2017_base only)
    maps = coco / "stuffthingmaps_panoptic_detectron2"
    assert json.loads((maps / "train2017_base_label_count.json").read_text()) == {
        "000000000001.png": [0, sky_b]
    }
    assert not (maps / "val2017_base_label_count.json").exists()
    data = json.loads((out / "panoptic_val2017_base.json").read_text())
    assert [im["id"] for im in data["images"]] == [1] and len(data["categories"]) == 156
    segs = {s["id"]: s for s in data["annotations"][0]["segments_info"]}
    assert {k: v["category_id"] for k, v in segs.items()} == {10: 1, S: 157}
    assert segs[S]["area"] == 3 and segs[S]["bbox"] == [1, 0, 3, 2]
    full_json = json.loads((out / "panoptic_val2017.json").read_text())
    cats = {s["category_id"] for s in full_json["annotations"][0]["segments_info"]}
    assert cats == {1, 21, 157, 169}
    # the json FreeSeg's README command leaves: COCO panoptic's own segments of the kept
    # classes (no merged stuff, no painted sky), their areas as given, the labelled image only
    release = json.loads((out / "panoptic_val2017_base_release.json").read_text())
    assert [im["id"] for im in release["images"]] == [1] and len(release["categories"]) == 156
    (ann,) = release["annotations"]
    assert [(s["id"], s["category_id"], s["area"]) for s in ann["segments_info"]] == [(10, 1, 1)]
    full_release = json.loads((out / "panoptic_val2017_release.json").read_text())
    assert [s["id"] for s in full_release["annotations"][0]["segments_info"]] == [10, 20]
    # registered over the same PNGs and label maps
    raw.jpg(coco / "val2017/000000000001.jpg", 2, 4)
    register_all_coco_panoptic(str(tmp_path))
    try:
        (record,) = DatasetCatalog.get("coco_2017_val_full_task_base_release_json")
        assert [s["id"] for s in record["segments_info"]] == [10]
        assert record["pan_seg_file_name"].endswith("val2017_base/000000000001.png")
        (ours,) = DatasetCatalog.get("coco_2017_val_full_task_base")
        assert sorted(s["id"] for s in ours["segments_info"]) == [10, S]
    finally:
        register_all_coco_panoptic(datasets_root())
    # the 133-class semantic labels of the panoptic annotation (merged stuff kept)
    sem133 = read(coco / "panoptic_semseg_val2017/000000000001.png")
    sky_merged = [c["id"] for c in COCO_PANOPTIC_CATEGORIES].index(187)
    assert sem133[1, 2] == 255 and sem133[0, 0] == 0 and sem133[0, 2] == sky_merged


def test_coco_48_17(tmp_path, prepare_script):
    from ovseg.data.datasets.categories import COCO_48_17_CATEGORIES

    ann = tmp_path / "coco/annotations"
    ann.mkdir(parents=True)
    cats = [
        {"id": 1, "name": "person"},
        {"id": 5, "name": "airplane"},
        {"id": 11, "name": "fire hydrant"},
    ]
    cats += [c for c in COCO_48_17_CATEGORIES if c["id"] not in (1, 5)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1},  # seen
        {"id": 2, "image_id": 2, "category_id": 5},  # unseen
        {"id": 3, "image_id": 3, "category_id": 11},  # neither: dropped
    ]
    data = {"images": [{"id": i} for i in (1, 2, 3)], "annotations": anns, "categories": cats}
    for split in ("train2017", "val2017"):
        (ann / f"instances_{split}.json").write_text(json.dumps(data))
    prepare_script("prepare_coco_instance_48_17").main(["--root", str(tmp_path)])
    train = json.loads((tmp_path / "coco/zero-shot/instances_train2017_seen_2.json").read_text())
    val = json.loads((tmp_path / "coco/zero-shot/instances_val2017_all_2.json").read_text())
    assert [a["id"] for a in train["annotations"]] == [1] and len(train["categories"]) == 48
    assert [im["id"] for im in train["images"]] == [1]
    assert [a["id"] for a in val["annotations"]] == [1, 2] and len(val["categories"]) == 65


def test_ade20k_panoptic(tmp_path, raw, read, prepare_script):
    ade = tmp_path / "ADEChallengeData2016"
    raw.jpg(ade / "images/training/ADE_train_00000001.jpg", 2, 3)
    raw.jpg(ade / "images/validation/ADE_val_00000001.jpg", 2, 3)
    # semantic: wall (1), grass (10, unseen stuff), bed (8, thing)
    for split, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        raw.png(ade / f"annotations/{split}/{stem}.png", [[1, 10, 8], [1, 8, 16]])
        ins = np.zeros((2, 3, 3), dtype=np.uint8)
        ins[0, 2] = ins[1, 1] = (1, 3, 0)  # instance class 1 (bed), instance 3
        ins[1, 2] = (6, 7, 0)  # instance class 6 (table, unseen), instance 7
        (ade / f"annotations_instance/{split}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(ins).save(ade / f"annotations_instance/{split}/{stem}.png")
    prepare_script("prepare_ade20k_panoptic").main(["--root", str(tmp_path)])
    full = rgb2id(read(ade / "ade20k_panoptic_train/ADE_train_00000001.png"))
    np.testing.assert_array_equal(full, [[1000, 10000, 8001], [1000, 8001, 16002]])
    base = rgb2id(read(ade / "ade20k_panoptic_train_base/ADE_train_00000001.png"))
    np.testing.assert_array_equal(base, [[1000, 0, 8001], [1000, 8001, 0]])
    ins = json.loads((ade / "ade20k_instance_val.json").read_text())
    assert [a["category_id"] for a in ins["annotations"]] == [7, 15]
    assert ins["annotations"][0]["area"] == 2 and len(ins["categories"]) == 100
    pan = json.loads((ade / "ade20k_panoptic_train_base.json").read_text())
    assert [s["category_id"] for s in pan["annotations"][0]["segments_info"]] == [0, 7]
    # FreeSeg's training_base labels: seen classes renumbered 0..134, unseen (9, 15) and
    # "other" 255 (prepare_ade20k_sem_seg_novel.py)
    sem_base = read(ade / "annotations_detectron2/training_base/ADE_train_00000001.png")
    np.testing.assert_array_equal(sem_base, [[0, 255, 7], [0, 7, 255]])
    # and their classes per file, which FreeSeg's prompt stage reads instead of the PNGs
    counts = json.loads((ade / "annotations_detectron2/training_base_label_count.json").read_text())
    assert counts == {"ADE_train_00000001.png": [0, 7]}
    lut = prepare_script("prepare_ade20k_panoptic")._BASE_LUT
    assert (lut[8], lut[10], lut[148], lut[149], lut[255]) == (8, 9, 134, 255, 255)
