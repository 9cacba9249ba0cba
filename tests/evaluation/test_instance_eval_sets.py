"""XPM's three evaluation sets (unseen-only, seen-only, generalized) on hand-built
predictions over each set's own vocabulary: categories, images, AP and AP50 per split."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ovseg_testing.xpm import OBJECTS, XPM_TRAIN, object_mask, registered_captioned_coco
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BitMasks, Instances

from ovseg.config import add_ovseg_config
from ovseg.data import build_dataset_mapper
from ovseg.data.datasets.instance_eval_sets import (
    instance_eval_set_names,
    register_instance_eval_sets,
)
from ovseg.evaluation import OpenVocabInstanceEvaluator
from ovseg.evaluation.instance_evaluator import evaluate_on_categories, split_average_precision

UNSEEN, SEEN, ALL = instance_eval_set_names(XPM_TRAIN)
# one tv found on image 1 only (of 2): precision 1 up to recall 0.5 -> 51 of 101 points
TV_AP = 100 * 51 / 101


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    with registered_captioned_coco(tmp_path_factory.mktemp("datasets")):
        names = register_instance_eval_sets(XPM_TRAIN)
        try:
            yield names
        finally:
            for name in names:
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)


def _predict(dataset, image_id, names, vocabulary):
    """Exact masks of the named objects of an image, classes as indices of ``vocabulary``
    (what a model given the set's vocabulary predicts); a tv on image 2 is put elsewhere."""
    by_cat = {1: "person", 18: "dog", 72: "tv"}
    masks, classes = [], []
    for cat, where in OBJECTS[image_id]:
        if by_cat[cat] not in names:
            continue
        mask = object_mask(where)
        if by_cat[cat] == "tv" and image_id == 2:
            mask = np.roll(mask, 16, axis=1)  # on the empty middle stripe: a false positive
        masks.append(mask)
        classes.append(vocabulary.index(by_cat[cat]))
    inst = Instances(mask.shape)
    inst.pred_masks = torch.as_tensor(np.stack(masks))
    inst.pred_classes = torch.tensor(classes)
    inst.scores = torch.ones(len(classes))
    inst.pred_boxes = BitMasks(inst.pred_masks).get_bounding_boxes()
    return {"instances": inst}


def _evaluate(dataset, tmp_path, names):
    evaluator = OpenVocabInstanceEvaluator(dataset, output_dir=str(tmp_path), distributed=False)
    evaluator.reset()
    vocabulary = list(MetadataCatalog.get(dataset).stuff_classes)
    for d in DatasetCatalog.get(dataset):
        evaluator.process([d], [_predict(dataset, d["image_id"], names, vocabulary)])
    return evaluator.evaluate()["segm"]


def test_sets_keep_their_categories_and_the_images_holding_one(sets):
    assert sets == [UNSEEN, SEEN] and ALL == XPM_TRAIN
    assert MetadataCatalog.get(UNSEEN).stuff_classes == ["dog"]
    assert MetadataCatalog.get(SEEN).stuff_classes == ["person", "tv"]
    assert MetadataCatalog.get(UNSEEN).unseen_classes == ["dog"]
    unseen = DatasetCatalog.get(UNSEEN)
    assert [d["image_id"] for d in unseen] == [1]  # image 2 has no dog
    assert [a["category_id"] for a in unseen[0]["annotations"]] == [0]
    seen = DatasetCatalog.get(SEEN)
    assert [[a["category_id"] for a in d["annotations"]] for d in seen] == [[0, 1], [0, 1]]


def test_the_test_mapper_gives_each_set_its_own_vocabulary(sets):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "ovseg_xpm_instance"
    for name, vocabulary in ((UNSEEN, ["dog"]), (SEEN, ["person", "tv"]), (ALL, None)):
        out = build_dataset_mapper(cfg, False, name)(DatasetCatalog.get(name)[0])
        assert out["vocabulary"] == (vocabulary or ["person", "dog", "tv"])


def test_ap_and_ap50_per_set_and_split(sets, tmp_path):
    unseen = _evaluate(UNSEEN, tmp_path / "u", ["dog"])
    assert unseen["AP"] == pytest.approx(100.0) and unseen["AP50"] == pytest.approx(100.0)
    assert unseen["AP50-unseen"] == pytest.approx(100.0) and "AP-seen" not in unseen

    seen = _evaluate(SEEN, tmp_path / "s", ["person", "tv"])
    assert seen["AP-person"] == pytest.approx(100.0) and seen["AP-tv"] == pytest.approx(TV_AP)
    assert seen["AP"] == pytest.approx((100 + TV_AP) / 2)
    assert seen["AP50"] == pytest.approx((100 + TV_AP) / 2) and "AP-unseen" not in seen

    everything = _evaluate(ALL, tmp_path / "g", ["person", "dog", "tv"])
    assert everything["AP50-unseen"] == pytest.approx(100.0)
    assert everything["AP50-seen"] == pytest.approx((100 + TV_AP) / 2)
    assert everything["AP"] == pytest.approx((200 + TV_AP) / 3)


def _precision_of(values):
    """A run COCOeval holding ``values`` (iou, recall, category, area, max dets) over
    categories 1, 2, 3 at COCO's IoU thresholds."""
    params = SimpleNamespace(catIds=[1, 2, 3], iouThrs=np.linspace(0.5, 0.95, 10))
    return SimpleNamespace(eval={"precision": values}, params=params)


def test_split_ap_reads_area_all_at_100_detections_and_skips_categories_without_gt():
    # as COCOeval.summarize (pycocotools cocoeval.py _summarize: s[:, :, :, aind, mind],
    # mean of s > -1): decoys at every other area range and detection count
    precision = np.full((10, 101, 3, 4, 3), 0.05)
    precision[:, :, 0, 0, -1] = 0.6  # category 1
    precision[0, :, 0, 0, -1] = 0.9  # category 1 at IoU 0.5
    precision[:, :, 1, :, :] = -1.0  # category 2: no ground truth
    precision[:, :, 2, 0, -1] = 0.2  # category 3
    got = split_average_precision(_precision_of(precision), [1, 2])
    assert got["AP"] == pytest.approx(100 * (0.9 + 9 * 0.6) / 10)
    assert got["AP50"] == pytest.approx(90.0) and got["AP75"] == pytest.approx(60.0)
    both = split_average_precision(_precision_of(precision), [1, 3])
    assert both["AP75"] == pytest.approx(100 * (0.6 + 0.2) / 2)
    for ids in ([2], [7]):  # a split without ground truth, or not in the run
        assert all(
            math.isnan(v) for v in split_average_precision(_precision_of(precision), ids).values()
        )


def _rle(x0, x1):
    """A 10x10 mask of rows 2-7 and columns x0..x1-1, COCO RLE with str counts."""
    m = np.zeros((10, 10), dtype=np.uint8, order="F")
    m[2:8, x0:x1] = 1
    rle = mask_util.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _ann(i, image_id, cat, x0, x1):
    return {"id": i, "image_id": image_id, "category_id": cat, "iscrowd": 0,
            "segmentation": _rle(x0, x1), "area": 6 * (x1 - x0),
            "bbox": [x0, 2, x1 - x0, 6]}  # fmt: skip


def test_only_images_with_an_annotation_of_the_set_are_scored():
    # as XPM's per-set jsons (construct_coco_json.py:262-282): a confident detection of a
    # set category on an image holding none of them is no false positive there
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 10, "height": 10}, {"id": 2, "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [_ann(1, 1, 1, 1, 5), _ann(2, 2, 2, 1, 5)],  # image 2: a dog only
    }
    gt.createIndex()
    results = [
        {"image_id": 1, "category_id": 1, "segmentation": _rle(1, 5), "score": 0.5},
        {"image_id": 2, "category_id": 1, "segmentation": _rle(5, 9), "score": 0.9},
    ]
    ev = evaluate_on_categories(gt, results, [1])
    assert split_average_precision(ev, [1])["AP"] == pytest.approx(100.0)
    assert list(ev.params.imgIds) == [1]
