"""FreeSeg's panoptic and instance outputs on the toy world carry the ids the ovseg_panoptic
evaluators read: segment ``category_id`` and instance ``pred_classes`` index the dataset's
``stuff_classes`` (contiguous), things are things, and an untrained model's outputs (queries
of one class overlapping) are evaluated without error."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import CONFIGS, ROOT, registered_toy_world

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data.dataset_mappers import build_dataset_mapper
from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.evaluation import build_evaluator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = CONFIGS / "toy/freeseg_toyrn_alltask_2400_bs8.yaml"
VAL = "toy_world_panoptic_val"


def test_toy_panoptic_and_instance_ids_are_what_the_evaluators_read(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config names the toy CLIP relative to the repository root
    with registered_toy_world(tmp_path / "datasets", num_train=2, num_val=3):
        cfg = load_config(str(CONFIG), ["OUTPUT_DIR", str(tmp_path / "out")])
        torch.manual_seed(0)
        model = Trainer.build_model(cfg).eval()
        assert model.test_tasks == ("semantic", "instance", "panoptic")
        meta = MetadataCatalog.get(VAL)
        assert list(model.vocabulary) == meta.stuff_classes  # index = contiguous id
        things = set(meta.thing_dataset_id_to_contiguous_id.values())
        mapper = build_dataset_mapper(cfg, False, VAL)
        inputs = [mapper(dict(d)) for d in DatasetCatalog.get(VAL)]
        with torch.no_grad():
            outputs = model(inputs)
        segments = [s for o in outputs for s in o["panoptic_seg"][1]]
        assert segments, "the untrained model kept no panoptic segment"
        for out in outputs:
            ids, info = out["panoptic_seg"]
            assert {s["id"] for s in info} == set(ids.unique().tolist()) - {0}
            for s in info:
                assert 0 <= s["category_id"] < len(meta.stuff_classes)
                assert s["isthing"] == (s["category_id"] in things)
            assert set(out["instances"].pred_classes.tolist()) <= things
        evaluator = build_evaluator(cfg, VAL, str(tmp_path / "eval"))
        evaluator.reset()
        evaluator.process(inputs, outputs)
        res = evaluator.evaluate()
    for key in ("PQ-seen", "PQ-unseen"):
        assert 0 <= res["panoptic_seg"][key] <= 100
    assert "mIoU-unseen" in res["sem_seg"] and "AP-unseen" in res["segm"]


def _outputs(cfg, state, dataset):
    model = Trainer.build_model(cfg).eval()
    model.load_state_dict(state)
    mapper = build_dataset_mapper(cfg, False, dataset)
    inputs = [mapper(dict(d)) for d in DatasetCatalog.get(dataset)]
    assert all(x["dataset_name"] == dataset for x in inputs)
    with torch.no_grad():
        return model, model(inputs)


def test_each_test_set_is_read_with_its_own_split_tasks_and_things(tmp_path, monkeypatch):
    # a second test set that calls the panoptic set's unseen classes seen (split b) or its
    # stuff a thing must change nothing of the panoptic set's outputs, whatever the order
    monkeypatch.chdir(ROOT)
    with registered_toy_world(tmp_path / "datasets", num_train=2, num_val=2):
        meta = MetadataCatalog.get(VAL)
        other = "toy_world_all_things_val"
        DatasetCatalog.register(other, lambda: DatasetCatalog.get("toy_world_sem_seg_val"))
        MetadataCatalog.get(other).set(
            stuff_classes=meta.stuff_classes, thing_classes=meta.stuff_classes, ignore_label=255
        )
        try:
            out = str(tmp_path / "out")
            cfg = load_config(str(CONFIG), ["OUTPUT_DIR", out])
            torch.manual_seed(0)
            state = Trainer.build_model(cfg).state_dict()
            _, alone = _outputs(cfg, state, VAL)
            for test in (
                (VAL, "toy_world_b_sem_seg_val"),
                ("toy_world_b_sem_seg_val", VAL),
                (other, VAL),
            ):
                cfg = load_config(str(CONFIG), ["OUTPUT_DIR", out, "DATASETS.TEST", repr(test)])
                model, outputs = _outputs(cfg, state, VAL)
                # the run's other set is still read as itself: semantic only, its own split
                assert model.dataset_facts[test[0]][0] == (
                    ("semantic",) if test[0] != VAL else ("semantic", "instance", "panoptic")
                )
                for a, b in zip(alone, outputs):
                    assert set(b) == {"sem_seg", "panoptic_seg", "instances"}, test
                    torch.testing.assert_close(a["sem_seg"], b["sem_seg"], rtol=0, atol=0)
                    assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
                    assert a["panoptic_seg"][1] == b["panoptic_seg"][1]
                    assert torch.equal(a["instances"].pred_classes, b["instances"].pred_classes)
        finally:
            DatasetCatalog.remove(other)
            MetadataCatalog.remove(other)
