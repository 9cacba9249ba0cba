"""ovseg's pq_compute on hand-computed cases: the IoU > 0.5 rule, VOID, crowd, absent classes."""

import json

import numpy as np
import pytest
from PIL import Image

from ovseg.evaluation import pq_compute
from ovseg.evaluation.panoptic_quality import id2rgb, panopticapi_provided, rgb2id

CATEGORIES = [
    {"id": 1, "name": "cat", "isthing": 1},
    {"id": 2, "name": "dog", "isthing": 1},
    {"id": 3, "name": "sky", "isthing": 0},
]


def _write(folder, name, ids, segments, image_id=1):
    """One image's panoptic PNG under ``folder/name/`` and its json ``folder/name.json``
    (areas measured on the PNG: panopticapi takes the ground truth's from the json)."""
    for s in segments:
        s["area"] = int((np.asarray(ids) == s["id"]).sum())
    (folder / name).mkdir(parents=True, exist_ok=True)
    Image.fromarray(id2rgb(np.asarray(ids))).save(folder / name / "a.png")
    ann = {"image_id": image_id, "file_name": "a.png", "segments_info": segments}
    data = {"images": [{"id": image_id}], "annotations": [ann], "categories": CATEGORIES}
    (folder / f"{name}.json").write_text(json.dumps(data))
    return str(folder / f"{name}.json")


def seg(i, cat, crowd=0):
    return {"id": i, "category_id": cat, "iscrowd": crowd}


def test_rgb_ids_round_trip():
    ids = np.array([[0, 1, 256], [65536, 16777215, 1234567]])
    np.testing.assert_array_equal(rgb2id(id2rgb(ids)), ids)


def test_match_rule_and_absent_category(tmp_path):
    # gt: cat (id 5) on 4 pixels, sky (id 7) on 4 pixels.
    gt = _write(tmp_path, "gt", [[5, 5, 7, 7], [5, 5, 7, 7]], [seg(5, 1), seg(7, 3)])
    # pred: cat on 3 of the cat pixels + 1 sky pixel (IoU 3/5 > 0.5: TP); sky on 3 pixels
    # (IoU 3/4: TP); no dog anywhere (dog is in neither: left out of every mean)
    pred = _write(tmp_path, "pred", [[1, 1, 1, 2], [1, 2, 2, 2]], [seg(1, 1), seg(2, 3)])
    # pred segment 1 = cols 0-2 of row 0 + col 0 of row 1 = 4 px: 3 cat + 1 sky
    res = pq_compute(gt, pred)
    iou_cat, iou_sky = 3 / 5, 3 / 5  # sky: pred 2 = 4 px, 3 on sky: 3 / (4 + 4 - 3)
    assert res["per_class"][1]["pq"] == pytest.approx(iou_cat)
    assert res["per_class"][3]["pq"] == pytest.approx(iou_sky)
    assert res["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert res["All"]["n"] == 2 and res["Things"]["n"] == 1 and res["Stuff"]["n"] == 1
    assert res["All"]["pq"] == pytest.approx((iou_cat + iou_sky) / 2)


def test_iou_of_exactly_half_is_no_match(tmp_path):
    gt = _write(tmp_path, "gt", [[5, 5, 0, 0]], [seg(5, 1)])
    pred = _write(tmp_path, "pred", [[0, 1, 1, 1]], [seg(1, 1)])
    # IoU = 1 / (3 + 2 - 1 - 2 void) = 1/2: not > 0.5, so one FN and, 2 of 3 pixels on VOID,
    # the prediction is ignored (no FP)
    res = pq_compute(gt, pred)
    assert res["per_class"][1]["pq"] == 0.0 and res["All"]["n"] == 1
    assert res["per_class"][1]["rq"] == 0.0


def test_void_pixels_leave_the_union_and_excuse_false_positives(tmp_path):
    gt = _write(tmp_path, "gt", [[5, 5, 0, 0], [0, 0, 0, 0]], [seg(5, 1)])
    # pred 1 covers the cat and two VOID pixels: IoU = 2 / (4 + 2 - 2 - 2) = 1 (VOID out)
    # pred 2 (dog) and pred 3 (sky) lie on VOID only: ignored, no FP
    pred = _write(tmp_path, "pred", [[1, 1, 1, 1], [2, 2, 2, 3]], [seg(1, 1), seg(2, 2), seg(3, 3)])
    res = pq_compute(gt, pred)
    assert res["per_class"][1] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    assert res["All"]["n"] == 1  # no FP for dog or sky


def test_a_prediction_exactly_half_on_void_is_a_false_positive(tmp_path):
    # panopticapi evaluation.py:161 excuses an unmatched prediction only when more than
    # half of it lies on VOID
    gt = _write(tmp_path, "gt", [[5, 5, 0, 0], [7, 7, 7, 7]], [seg(5, 1), seg(7, 3)])
    # cat exact; sky 3 of its 4 pixels (+ 1 VOID): a match; dog 1 VOID + 1 sky pixel: FP
    pred = _write(tmp_path, "pred", [[1, 1, 3, 2], [3, 3, 3, 2]], [seg(1, 1), seg(3, 3), seg(2, 2)])
    res = pq_compute(gt, pred)
    assert res["All"]["n"] == 3 and res["Things"]["n"] == 2
    assert res["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_crowd_is_never_matched_and_absorbs_its_category(tmp_path):
    # gt: a crowd of cats (id 9) over 6 px, one dog (id 4) over 2 px
    gt = _write(tmp_path, "gt", [[9, 9, 9, 4], [9, 9, 9, 4]], [seg(9, 1, crowd=1), seg(4, 2)])
    # pred: a cat exactly on the crowd (no TP, no FP: on its crowd), a dog on crowd pixels
    # (a FP: the crowd is of another class) and nothing on the real dog (FN)
    pred = _write(tmp_path, "pred", [[1, 1, 1, 0], [1, 1, 2, 0]], [seg(1, 1), seg(2, 2)])
    res = pq_compute(gt, pred)
    assert res["All"]["n"] == 1  # cat: nothing counted (left out of the mean); dog: FP + FN
    assert res["per_class"][2]["pq"] == 0.0


def test_inconsistent_prediction_is_refused(tmp_path):
    gt = _write(tmp_path, "gt", [[5]], [seg(5, 1)])
    pred = _write(tmp_path, "pred", [[1]], [])
    with pytest.raises(KeyError, match="segment with ID 1 is presented in PNG"):
        pq_compute(gt, pred)


def test_panopticapi_modules_are_provided_then_removed():
    import sys

    assert "panopticapi" not in sys.modules
    with panopticapi_provided():
        from panopticapi.evaluation import pq_compute as provided

        assert provided is pq_compute
    assert "panopticapi" not in sys.modules
