"""The region-classification evaluator on hand-computed cases (top-1/top-5 overall, seen,
unseen, mean class accuracy, ties), its registration for ``<split>_regions`` sets, and one
real evaluation of FreeSeg's prompt stage on such a set."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from ovseg_testing import tiny_freeseg_prompt_cfg
from ovseg_testing.panoptic import PANOPTIC, registered_tiny_panoptic

from detectron2.data import MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from detectron2.structures import Instances

import ovseg  # noqa: F401  (registers the meta-architectures)
from ovseg.engine import Trainer
from ovseg.evaluation import RegionClassificationEvaluator, build_evaluator, region_accuracies

NAMES = ["a", "b", "c", "d", "e", "f"]


def _io(target: int, logits):
    inst = Instances((2, 2))
    inst.gt_masks, inst.gt_classes = torch.ones(1, 2, 2, dtype=torch.bool), torch.tensor([target])
    return {"instances": inst, "vocabulary": NAMES}, {"classification": torch.tensor([logits])}


def test_accuracies_by_hand():
    # (class, rank of its true class, unseen): a x2 (ranks 0, 2), b (rank 5), c unseen (0)
    got = region_accuracies([("a", 0, False), ("a", 2, False), ("b", 5, False), ("c", 0, True)])
    want = {
        "top1": 50.0,
        "top5": 75.0,
        "top1-seen": 100 / 3,
        "top5-seen": 200 / 3,
        "top1-unseen": 100.0,
        "top5-unseen": 100.0,
        "mACC": (50 + 0 + 100) / 3,  # classes, not regions
        "mACC-seen": 25.0,
        "mACC-unseen": 100.0,
    }
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    only_seen = region_accuracies([("a", 1, False)])
    assert "top1-unseen" not in only_seen and only_seen["top1"] == 0.0


def test_mean_class_accuracy_does_not_depend_on_the_regions_order():
    # per-class top-1 a 1/3, b 1/7, c 2/3 (unseen), d 1: a plain sum of these in the order the
    # classes first appear gives 53.57142857142857 or ...58; gathered ranks reorder regions
    blocks = [
        [("a", 0, False), ("a", 1, False), ("a", 1, False)],
        [("b", 0, False)] + [("b", 1, False)] * 6,
        [("c", 0, True), ("c", 0, True), ("c", 1, True)],
        [("d", 0, False)],
    ]
    results = {
        tuple(region_accuracies(list(itertools.chain(*order))).items())
        for order in itertools.permutations(blocks)
    }
    assert len(results) == 1, results
    assert dict(results.pop())["mACC"] == pytest.approx(100 * (1 / 3 + 1 / 7 + 2 / 3 + 1) / 4)


def test_evaluator_ranks_logits_against_the_target(caplog):
    MetadataCatalog.get("region_eval_hand").set(stuff_classes=NAMES, unseen_classes=["f"])
    ev = RegionClassificationEvaluator("region_eval_hand", distributed=False)
    ev.reset()
    cases = [
        _io(0, [9.0, 1, 2, 3, 4, 5]),  # a first: top-1
        _io(1, [9.0, 5, 8, 7, 6, 0]),  # b fifth: top-5 only
        _io(2, [9.0, 8, 1, 7, 6, 5]),  # c sixth: neither
        _io(5, [1.0, 1, 1, 1, 1, 1]),  # f (unseen) tied with all: counts as first
    ]
    for inp, out in cases:
        ev.process([inp], [out])
    ev.process([cases[0][0]], [{"sem_seg": torch.zeros(6, 2, 2)}])  # not a region output
    with caplog.at_level(logging.INFO, logger="ovseg.evaluation.region_classification"):
        res = ev.evaluate()["classification"]
    # the seen / unseen split reaches the log (detectron2's csv lines skip '-' keys)
    assert "4 regions" in caplog.text and "top1-unseen" in caplog.text and "100.000" in caplog.text
    assert res["top1"] == 50.0 and res["top5"] == 75.0
    assert res["top1-seen"] == pytest.approx(100 / 3) and res["top1-unseen"] == 100.0
    assert res["mACC"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="5 logits for a 6-name vocabulary"):
        ev.process([cases[0][0]], [{"classification": torch.zeros(1, 5)}])


def test_prompt_stage_evaluates_a_region_set(tmp_path):
    with registered_tiny_panoptic(tmp_path / "pan"):
        regions = PANOPTIC + "_regions"
        assert MetadataCatalog.get(regions).evaluator_type == "ovseg_region_classification"
        cfg = tiny_freeseg_prompt_cfg(
            tmp_path / "cache",
            "DATASETS.TEST", f"('{regions}',)",
            "INPUT.DATASET_MAPPER_NAME", "ovseg_region",
            "MODEL.FREESEG.PROMPT_TEST_SIZE", "16",
        )  # fmt: skip
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        evaluator = build_evaluator(cfg, regions)
        assert isinstance(evaluator, RegionClassificationEvaluator)
        loader = Trainer.build_test_loader(cfg, regions)
        res = inference_on_dataset(model, loader, evaluator)["classification"]
    # cat, dog (unseen) and sky: one region each, so top-5 of 3 classes is certain
    assert res["top5"] == 100.0 and res["top1"] in (0.0, 100 / 3, 200 / 3, 100.0)
    assert {"top1-seen", "top1-unseen", "mACC"} <= res.keys()


def test_unseen_split_compares_normalised_names():
    # a vocabulary spelling an unseen class otherwise ("Potted Plant " vs "potted plant")
    # still counts it as unseen: names are compared normalised on both sides
    name = "region_eval_normalised_names_test"
    MetadataCatalog.get(name).set(
        stuff_classes=["cat", "potted plant"], unseen_classes=["potted plant"]
    )
    vocabulary = ["cat", "Potted Plant "]
    try:
        ev = RegionClassificationEvaluator(name, distributed=False)
        ev.reset()
        for target in (0, 1):
            inp, out = _io(target, [2.0, 1.0])
            ev.process([{**inp, "vocabulary": vocabulary}], [out])
        res = ev.evaluate()["classification"]
    finally:
        MetadataCatalog.remove(name)
    assert res["top1-seen"] == 100.0 and res["top1-unseen"] == 0.0
    assert res["mACC-unseen"] == 0.0
