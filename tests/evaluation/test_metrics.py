"""segmentation_metrics on hand-computed confusion matrices."""

import numpy as np
import pytest

from ovseg.evaluation import harmonic_iou, segmentation_metrics

# rows: ground truth a, b, c; columns: predictions a, b, c
CONF3 = np.array(
    [
        [6, 2, 0],  # gt a: 8 pixels, 6 right, 2 called b
        [1, 3, 1],  # gt b: 5 pixels, 3 right
        [0, 0, 7],  # gt c: 7 pixels, all right
    ]
)
NAMES3 = ["a", "b", "c"]
# By hand: tp = (6, 3, 7); gt sums = (8, 5, 7); prediction sums = (7, 5, 8); total 20.
# union = gt + pred - tp = (9, 7, 8), so IoU = (6/9, 3/7, 7/8) and ACC = (6/8, 3/5, 7/7).
IOU3 = (6 / 9, 3 / 7, 7 / 8)


def test_three_classes_by_hand():
    res = segmentation_metrics(CONF3, NAMES3)
    assert res["IoU-a"] == pytest.approx(100 * 6 / 9)
    assert res["IoU-b"] == pytest.approx(100 * 3 / 7)
    assert res["IoU-c"] == pytest.approx(100 * 7 / 8)
    # (66.667 + 42.857 + 87.5) / 3 = 65.675
    assert res["mIoU"] == pytest.approx(65.67460, abs=1e-4)
    # (8 * 6/9 + 5 * 3/7 + 7 * 7/8) / 20 = (5.3333 + 2.1429 + 6.125) / 20 = 68.006
    assert res["fwIoU"] == pytest.approx(68.00595, abs=1e-4)
    assert res["ACC-a"] == pytest.approx(75.0)
    assert res["ACC-b"] == pytest.approx(60.0)
    assert res["ACC-c"] == pytest.approx(100.0)
    assert res["mACC"] == pytest.approx((75 + 60 + 100) / 3)
    assert res["pACC"] == pytest.approx(100 * 16 / 20)
    # without a split there are no zero-shot keys
    assert not {"mIoU-seen", "mIoU-unseen", "hIoU"} & set(res)
    assert all(isinstance(v, float) for v in res.values())


def test_detectron2_key_order():
    res = segmentation_metrics(CONF3, NAMES3, unseen=["c"])
    assert list(res) == [
        "mIoU", "fwIoU", "IoU-a", "IoU-b", "IoU-c", "mACC", "pACC", "ACC-a", "ACC-b", "ACC-c",
        "mIoU-gt", "mIoU-seen", "mIoU-unseen", "hIoU",
    ]  # fmt: skip


def test_absent_class_excluded_but_missed_class_counts_zero():
    conf = np.array(
        [
            [4, 0, 0, 1],  # gt a: 5 pixels, 4 right, 1 called d
            [2, 0, 0, 0],  # gt b: 2 pixels, never right -> IoU 0, ACC 0, still averaged
            [0, 0, 0, 0],  # c: neither in the ground truth nor predicted -> left out
            [0, 0, 0, 0],  # d: no ground truth but predicted once -> IoU 0, no ACC
        ]
    )
    res = segmentation_metrics(conf, ["a", "b", "c", "d"])
    # a: tp 4, union 5 + 6 - 4 = 7
    assert res["IoU-a"] == pytest.approx(100 * 4 / 7)
    assert res["IoU-b"] == 0.0
    assert res["IoU-d"] == 0.0
    assert "IoU-c" not in res and "ACC-c" not in res and "ACC-d" not in res
    # mean over a, b, d (non-empty union): (57.143 + 0 + 0) / 3
    assert res["mIoU"] == pytest.approx(100 * 4 / 7 / 3)
    # mean over a, b (ground truth present): (80 + 0) / 2
    assert res["mACC"] == pytest.approx(40.0)
    assert res["ACC-b"] == 0.0
    # (5 * 4/7 + 2 * 0) / 7 gt pixels
    assert res["fwIoU"] == pytest.approx(100 * 20 / 49)
    assert res["pACC"] == pytest.approx(100 * 4 / 7)
    # detectron2 after v0.6 / CAT-Seg: only a and b (ground truth present), (57.143 + 0) / 2
    assert res["mIoU-gt"] == pytest.approx(100 * 4 / 7 / 2)
    assert not any(np.isnan(v) for v in res.values())


def test_gt_only_mean_equals_miou_when_every_predicted_class_has_ground_truth():
    res = segmentation_metrics(CONF3, NAMES3)
    assert res["mIoU-gt"] == pytest.approx(res["mIoU"])


def test_seen_unseen_and_hiou():
    res = segmentation_metrics(CONF3, NAMES3, unseen=["c"])
    seen = 100 * (6 / 9 + 3 / 7) / 2  # 54.762
    unseen = 100 * 7 / 8  # 87.5
    assert res["mIoU-seen"] == pytest.approx(seen)
    assert res["mIoU-unseen"] == pytest.approx(unseen)
    # 2 * 54.762 * 87.5 / (54.762 + 87.5) = 67.364
    assert res["hIoU"] == pytest.approx(67.36402, abs=1e-4)
    assert res["hIoU"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    # the split does not change the overall metrics
    assert res["mIoU"] == pytest.approx(segmentation_metrics(CONF3, NAMES3)["mIoU"])

    res2 = segmentation_metrics(CONF3, NAMES3, unseen=("b", "c"))
    assert res2["mIoU-seen"] == pytest.approx(100 * 6 / 9)
    assert res2["mIoU-unseen"] == pytest.approx(100 * (3 / 7 + 7 / 8) / 2)


def test_unseen_group_only_counts_classes_with_union():
    conf = np.array([[3, 1, 0], [1, 1, 0], [0, 0, 0]])
    res = segmentation_metrics(conf, ["a", "b", "c"], unseen=["b", "c"])
    # c has an empty union, so mIoU-unseen is b's IoU alone: 1 / (2 + 2 - 1)
    assert res["mIoU-unseen"] == pytest.approx(100 / 3)
    assert res["mIoU-seen"] == pytest.approx(100 * 3 / 5)


def test_hiou_zero_when_both_zero():
    # seen a is always called unseen b and vice versa: S = U = 0
    conf = np.array([[0, 3], [2, 0]])
    res = segmentation_metrics(conf, ["a", "b"], unseen=["b"])
    assert res["mIoU-seen"] == 0.0
    assert res["mIoU-unseen"] == 0.0
    assert res["hIoU"] == 0.0
    assert res["mIoU"] == 0.0 and res["pACC"] == 0.0


def test_hiou_nan_when_a_group_has_no_evaluated_class():
    conf = np.array([[2, 0], [0, 0]])
    res = segmentation_metrics(conf, ["a", "b"], unseen=["b"])
    assert res["mIoU-seen"] == 100.0
    assert np.isnan(res["mIoU-unseen"])
    assert np.isnan(res["hIoU"])


def test_harmonic_iou():
    assert harmonic_iou(0.0, 0.0) == 0.0
    assert harmonic_iou(50.0, 0.0) == 0.0
    assert harmonic_iou(40.0, 60.0) == pytest.approx(48.0)
    assert np.isnan(harmonic_iou(float("nan"), 10.0))


def test_float_and_int_matrices_agree():
    res_int = segmentation_metrics(CONF3.astype(np.int64), NAMES3)
    res_float = segmentation_metrics(CONF3.astype(np.float32), NAMES3)
    assert res_int == pytest.approx(res_float)


@pytest.mark.parametrize(
    "conf, names, match",
    [
        (np.zeros((2, 3)), ["a", "b"], r"square"),
        (np.zeros(4), ["a", "b"], r"square"),
        (np.ones((3, 3)), ["a", "b"], r"\(3, 3\).*2 class names"),
        (np.zeros((0, 0)), [], r"empty"),
        (np.zeros((2, 2)), ["a", "b"], r"all zeros"),
        (np.array([[1, -1], [0, 1]]), ["a", "b"], r"non-negative"),
        (np.array([[1, np.nan], [0, 1]]), ["a", "b"], r"finite"),
        (np.ones((2, 2)), ["a", "a"], r"duplicates \['a'\]"),
    ],
)
def test_bad_matrices_raise(conf, names, match):
    with pytest.raises(ValueError, match=match):
        segmentation_metrics(conf, names)


def test_unknown_unseen_names_raise_naming_them():
    with pytest.raises(ValueError, match=r"\['dog', 'zebra'\]"):
        segmentation_metrics(CONF3, NAMES3, unseen=["c", "dog", "zebra"])


def test_unseen_as_plain_string_is_rejected():
    with pytest.raises(ValueError, match=r"not the string 'c'"):
        segmentation_metrics(CONF3, NAMES3, unseen="c")
