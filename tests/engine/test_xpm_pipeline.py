"""XPM's three stages end to end at a tiny size, in process as train_net.py and
tools/generate_pseudo_labels.py run them: the toy teacher trains on the seen shapes, the
generation job writes its caption pseudo instances into a store, the toy student trains on
that store (the shipped toy configs, shrunk as in tests/test_configs.py)."""

from __future__ import annotations

import json

import pytest
from ovseg_testing import CONFIGS, cpu_opts, registered_toy_world

from detectron2.utils.env import seed_all_rng

from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.engine.pseudo_labelling import main as generate_main
from ovseg.engine.pseudo_labelling import parse_args as generate_args
from ovseg.pseudo import InstancePseudoLabelStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TEACHER = CONFIGS / "toy/xpm_teacher_toyrn_600_bs8.yaml"
STUDENT = CONFIGS / "toy/xpm_student_toyrn_600_bs8.yaml"
TRAIN = "toy_world_instance_train"


def _train(config, arch, out, *opts):
    steps = ["SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0", "TEST.EVAL_PERIOD", "0"]
    cfg = load_config(str(config), cpu_opts(arch, out / "cache", *steps, *opts))
    cfg.OUTPUT_DIR = str(out / arch)
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.test = lambda *a, **k: {}  # evaluation is tested elsewhere
    trainer.train()
    return trainer, out / arch / "model_final.pth"


def test_teacher_store_student(tmp_path):
    with registered_toy_world(tmp_path / "datasets", num_train=4, num_val=2):
        _, teacher = _train(TEACHER, "XPMTeacher", tmp_path)
        store = tmp_path / "store"
        opts = cpu_opts("XPMStudent", tmp_path / "cache", "MODEL.XPM.TEACHER_WEIGHTS", teacher)
        args = ["--config-file", str(STUDENT), "--output", str(store), "--no-progress"]
        stats = generate_main(generate_args([*args, *map(str, opts)]))
        assert stats == {"total": 4, "written": 4, "skipped": 0}
        manifest = json.loads((store / "manifest.json").read_text())
        assert manifest["kind"] == "instances" and manifest["dataset"] == TRAIN
        assert manifest["teacher"]["settings"]["xpm"]["region_embedding"] == "pool"
        reader = InstancePseudoLabelStore.open(str(store))
        records = [reader.read(i) for i in reader.image_ids()]
        # every caption names every shape: each image gets one pseudo instance per shape noun
        assert all(len(r["instances"]) == len(r["nouns"]) > 0 for r in records)
        assert {i.category for r in records for i in r["instances"]} & {"triangle", "ring"}

        student, final = _train(
            STUDENT,
            "XPMStudent",
            tmp_path,
            "MODEL.XPM.TEACHER_WEIGHTS", str(teacher),
            "DATASETS.PSEUDO_LABELS", str(store),
        )  # fmt: skip
        assert final.is_file()
        # the pseudo pass ran: its losses were logged
        history = student.storage.histories()
        assert "loss_mask_pseudo" in history and "loss_cls_pseudo" in history
