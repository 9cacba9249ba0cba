"""The instance and panoptic evaluators on the tiny panoptic dataset: perfect predictions,
a missed unseen class, split keys (and their log), the results file, and the evaluator
factory."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from ovseg_testing.panoptic import (
    CONTIGUOUS,
    INSTANCE,
    PANOPTIC,
    instance_output,
    panoptic_output,
    registered_tiny_panoptic,
)

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

from ovseg.config import add_ovseg_config
from ovseg.evaluation import (
    OpenVocabInstanceEvaluator,
    OpenVocabPanopticEvaluator,
    build_evaluator,
)

DOG = 2  # the unseen class's dataset id


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with registered_tiny_panoptic(tmp_path_factory.mktemp("pan")):
        yield DatasetCatalog.get(PANOPTIC)[0]


def _panoptic_output(drop_dog=False):
    return panoptic_output(drop=(DOG,) if drop_dog else ())


def _instance_output(drop_dog=False):
    return instance_output(drop=(DOG,) if drop_dog else ())


@pytest.mark.parametrize("drop_dog", [False, True])
def test_panoptic_evaluator(tiny, tmp_path, drop_dog, caplog):
    evaluator = OpenVocabPanopticEvaluator(PANOPTIC, output_dir=str(tmp_path))
    evaluator.reset()
    evaluator.process([tiny], [_panoptic_output(drop_dog)])
    with caplog.at_level(logging.INFO, logger="ovseg.evaluation"):
        res = evaluator.evaluate()["panoptic_seg"]
    # detectron2's csv lines skip keys with '-': the split table is logged on its own
    assert f"PQ per split on {PANOPTIC}" in caplog.text and "PQ-unseen" in caplog.text
    assert res["PQ-seen"] == pytest.approx(100.0)  # cat and sky, exact
    assert res["PQ-unseen"] == pytest.approx(0.0 if drop_dog else 100.0)
    assert res["PQ"] == pytest.approx(200 / 3 if drop_dog else 100.0)
    assert res["PQ_st"] == pytest.approx(100.0) and res["SQ-seen"] == pytest.approx(100.0)


def test_a_split_with_nothing_to_score_is_nan_not_zero(tiny, tmp_path):
    # a split whose classes occur neither in the ground truth nor in the predictions is not
    # measured (as mIoU-unseen and AP-unseen): 0 would read as a total failure
    evaluator = OpenVocabPanopticEvaluator(PANOPTIC, output_dir=str(tmp_path))
    evaluator._splits["unseen"] = [99]  # a category of the split that no image has
    evaluator.reset()
    evaluator.process([tiny], [_panoptic_output()])
    res = evaluator.evaluate()["panoptic_seg"]
    assert all(np.isnan(res[f"{k}-unseen"]) for k in ("PQ", "SQ", "RQ"))
    assert res["PQ-seen"] == pytest.approx(100.0) and res["PQ"] == pytest.approx(100.0)


@pytest.mark.parametrize("drop_dog", [False, True])
def test_instance_evaluator(tiny, tmp_path, drop_dog, caplog):
    evaluator = OpenVocabInstanceEvaluator(PANOPTIC, output_dir=str(tmp_path), distributed=False)
    evaluator.reset()
    evaluator.process([tiny], [_instance_output(drop_dog)])
    with caplog.at_level(logging.INFO, logger="ovseg.evaluation"):
        res = evaluator.evaluate()["segm"]
    assert f"Mask AP per split on {PANOPTIC}" in caplog.text and "AP50-unseen" in caplog.text
    assert res["AP50-seen"] == pytest.approx(100.0) and res["AP-seen"] == pytest.approx(100.0)
    assert res["AP50-unseen"] == pytest.approx(0.0 if drop_dog else 100.0)
    assert res["AP"] == pytest.approx(50.0 if drop_dog else 100.0)


def test_stuff_class_instances_are_dropped(tiny, tmp_path):
    out = _instance_output()
    out["instances"].pred_classes[0] = CONTIGUOUS[5]  # a "sky" instance: not a thing
    evaluator = OpenVocabInstanceEvaluator(PANOPTIC, output_dir=str(tmp_path), distributed=False)
    evaluator.reset()
    evaluator.process([tiny], [out])
    res = evaluator.evaluate()["segm"]
    assert res["AP-seen"] == pytest.approx(0.0) and res["AP-unseen"] == pytest.approx(100.0)


def test_no_instance_at_all_still_gives_every_split_key(tiny, tmp_path):
    out = _instance_output()
    out["instances"] = out["instances"][:0]  # an untrained model may keep no instance
    evaluator = OpenVocabInstanceEvaluator(PANOPTIC, output_dir=str(tmp_path), distributed=False)
    evaluator.reset()
    evaluator.process([tiny], [out])
    res = evaluator.evaluate()["segm"]
    for key in ("AP", "AP-seen", "AP-unseen", "AP50-seen", "AP50-unseen", "AP75-unseen"):
        assert np.isnan(res[key]), key


def test_results_file_holds_dataset_category_ids(tiny, tmp_path):
    # as detectron2's COCOEvaluator: coco_instances_results.json, with the json's ids
    evaluator = OpenVocabInstanceEvaluator(PANOPTIC, output_dir=str(tmp_path), distributed=False)
    evaluator.reset()
    evaluator.process([tiny], [_instance_output()])
    evaluator.evaluate()
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    gt = json.loads(Path(MetadataCatalog.get(PANOPTIC).json_file).read_text())["annotations"]
    gt = [a for a in gt if not a["iscrowd"]]  # what the output predicts
    assert len(results) == len(gt) == 2
    assert sorted(r["category_id"] for r in results) == sorted(a["category_id"] for a in gt)
    assert {r["image_id"] for r in results} == {tiny["image_id"]}


def test_a_split_without_annotations_writes_results_and_scores_nothing(tiny, tmp_path):
    # a test-dev style json (images and categories only): results for the server, no AP
    meta = MetadataCatalog.get(INSTANCE)
    coco = json.loads(Path(meta.json_file).read_text())
    del coco["annotations"]
    (tmp_path / "dev.json").write_text(json.dumps(coco))
    name = "tiny_instance_dev_test"
    DatasetCatalog.register(name, lambda: [])
    keys = ("thing_dataset_id_to_contiguous_id", "stuff_classes", "unseen_classes")
    MetadataCatalog.get(name).set(json_file=str(tmp_path / "dev.json"), **{
        k: meta.get(k) for k in keys
    })  # fmt: skip
    try:
        evaluator = OpenVocabInstanceEvaluator(name, output_dir=str(tmp_path), distributed=False)
        evaluator.reset()
        evaluator.process([tiny], [_instance_output()])
        assert evaluator.evaluate() == {}
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert len(json.loads((tmp_path / "coco_instances_results.json").read_text())) == 2


def test_factory(tiny, tmp_path):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    evaluators = build_evaluator(cfg, PANOPTIC, str(tmp_path))
    assert isinstance(evaluators, DatasetEvaluators)
    kinds = [type(e).__name__ for e in evaluators._evaluators]
    # no sem_seg_root: no mIoU evaluator
    assert kinds == ["OpenVocabPanopticEvaluator", "OpenVocabInstanceEvaluator"]
    assert isinstance(build_evaluator(cfg, INSTANCE, str(tmp_path)), OpenVocabInstanceEvaluator)
    # by default OUTPUT_DIR/inference; one folder per set when a run evaluates several (the
    # XPM teacher's three instance splits overwrote each other's results)
    cfg.OUTPUT_DIR, cfg.DATASETS.TEST = str(tmp_path), (INSTANCE,)
    assert build_evaluator(cfg, INSTANCE)._output_dir == str(tmp_path / "inference")
    cfg.DATASETS.TEST = (INSTANCE, PANOPTIC)
    assert build_evaluator(cfg, INSTANCE)._output_dir == str(tmp_path / "inference" / INSTANCE)
    # a semantic-only output is skipped by both
    evaluators.reset()
    evaluators.process([tiny], [{"sem_seg": torch.zeros(3, 8, 8)}])
    assert evaluators.evaluate() == {}
