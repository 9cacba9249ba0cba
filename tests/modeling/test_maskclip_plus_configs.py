"""Every shipped MaskCLIP+ config builds its model (tiny random CLIP, tiny widths) and runs one
training step on a fixture ADE20K; tools/generate_pseudo_labels.py + train_net.py end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from maskclip_plus_utils import TINY_VIT
from ovseg_testing import ROOT, subprocess_env, write_ade20k_fixture

from detectron2.data import DatasetCatalog
from detectron2.utils.events import EventStorage

from ovseg.data.datasets.common import datasets_root
from ovseg.data.datasets.register_ade20k import register_all_ade20k
from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.modeling.meta_arch.maskclip_plus import MaskCLIPPlus
from ovseg.modeling.meta_arch.maskclip_plus_build import scored_names
from ovseg.pseudo import PseudoLabelStore

COCO = "maskclip_plus_vitb16_r101_deeplabv2_transductive_80k_bs16.yaml"
CONFIGS = sorted(ROOT.glob("configs/*/maskclip_plus/*.yaml"))
CONFIGS += sorted(ROOT.glob("configs/toy/maskclip_plus*.yaml"))
SMALL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.CLIP.MODEL_NAME", TINY_VIT,
    "MODEL.CLIP.PRETRAINED", "",
    "MODEL.CLIP.TEMPLATES", "single",
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16",
    "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", "[8]",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "INPUT.CROP.SIZE", "(48, 48)",
    "INPUT.COLOR_AUG_SSD", "False",
    "DATASETS.TRAIN", '("ade20k_sem_seg_train",)',
    "DATASETS.TEST", '("ade20k_sem_seg_val",)',
]  # fmt: skip
# the official schedules: teacher labels, then self-training (annotation-free: teacher only)
SCHEDULES = {
    ("voc", "transductive"): (2000, 20000),
    ("pcontext", "transductive"): (4000, 40000),
    ("coco_stuff", "transductive"): (8000, 80000),
    ("voc", "annofree"): (-1, 2000),
    ("pcontext", "annofree"): (-1, 4000),
    ("coco_stuff", "annofree"): (-1, 8000),
}


@pytest.fixture(scope="module")
def ade_fixture(tmp_path_factory):
    root = write_ade20k_fixture(tmp_path_factory.mktemp("datasets"), n_train=2, n_val=1)
    register_all_ade20k(str(root))
    yield root
    register_all_ade20k(datasets_root())


def fill_store(root, cfg) -> str:
    """A store for the fixture's training images over the classes ``cfg`` scores."""
    names = scored_names(cfg)
    threshold = cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD
    manifest = {"fingerprint": "test", "vocabulary": list(names), "threshold": threshold}
    store = PseudoLabelStore.create(str(root), {**manifest, "dataset": "ade20k_sem_seg_train"})
    for d in DatasetCatalog.get("ade20k_sem_seg_train"):
        store.write(d["image_id"], np.full((64, 64), len(names) - 1), np.ones((64, 64)))
    return str(root)


def test_configs_found():
    assert len(CONFIGS) >= 6, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_builds_and_trains_one_step(path, ade_fixture, tmp_path_factory):
    cfg = load_config(str(path))
    assert cfg.MODEL.META_ARCHITECTURE == "MaskCLIPPlus"
    mc = cfg.MODEL.MASKCLIP_PLUS
    if path.parent.name == "maskclip_plus":
        kind = "annofree" if mc.ANNOTATION_FREE else "transductive"
        schedule = SCHEDULES[(path.parent.parent.name, kind)]
        assert (cfg.MODEL.OVSEG.SELF_TRAINING.START_ITER, cfg.SOLVER.MAX_ITER) == schedule
        assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.OPTIMIZER == "SGD"
        assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.CLIP.PRETRAINED == "openai"
        assert cfg.MODEL.OVSEG.ZERO_SHOT_SETTING == (
            "none" if mc.ANNOTATION_FREE else "transductive"
        )

    cache = tmp_path_factory.getbasetemp() / "clip_cache"  # text embeddings shared by configs
    cfg = load_config(str(path), SMALL + ["MODEL.CLIP.CACHE_DIR", str(cache)])
    if mc.PSEUDO_LABEL_SOURCE == "store":
        store = fill_store(tmp_path_factory.mktemp("store"), cfg)
        cfg.DATASETS.PSEUDO_LABELS = store
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    assert isinstance(model, MaskCLIPPlus)
    optimizer = Trainer.build_optimizer(cfg, model)
    batch = next(iter(Trainer.build_train_loader(cfg)))
    model.train()
    before = [p.detach().clone() for p in model.head.parameters()]
    with EventStorage(0):
        losses = model(batch)
    loss = sum(losses.values())
    assert torch.isfinite(loss) and loss > 0
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.head.parameters()))


def load_tool(name: str):
    """The package module behind ``tools/<name>.py``: its ``parse_args`` and ``main``."""
    modules = {"generate_pseudo_labels": "ovseg.engine.pseudo_labelling"}
    return importlib.import_module(modules[name])


def run(script, args, datasets):
    proc = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        env=subprocess_env(datasets),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    return log


@pytest.mark.slow
def test_generate_store_then_train_net(ade_fixture, tmp_path):
    """The store made by tools/generate_pseudo_labels.py trains the student through
    train_net.py, which switches to self-training at SELF_TRAINING.START_ITER and evaluates."""
    config = "configs/coco_stuff/maskclip_plus/" + COCO
    unseen = tmp_path / "unseen.json"  # ADE names hold commas: a JSON list, not a comma list
    cfg = load_config(config, SMALL)
    unseen.write_text(json.dumps(list(scored_names(cfg))))
    common = [
        *SMALL,
        "MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache"),
        "MODEL.RESNETS.DEPTH", "50",
        "MODEL.RESNETS.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.NORM", "BN",
        "MODEL.OVSEG.SELF_TRAINING.START_ITER", "2",
        "DATASETS.PSEUDO_LABELS", str(tmp_path / "store"),
    ]  # fmt: skip
    # the tool in this process (one interpreter start less), as its __main__ runs it
    tool = load_tool("generate_pseudo_labels")
    args = ["--config-file", config, "--output", str(tmp_path / "store"), "--no-progress"]
    args += [*common, "MODEL.META_ARCHITECTURE", "MaskCLIP", "MODEL.OVSEG.TEST_VOCABULARY"]
    stats = tool.main(tool.parse_args([*args, str(unseen), "OUTPUT_DIR", str(tmp_path / "gen")]))
    assert stats["written"] == len(DatasetCatalog.get("ade20k_sem_seg_train"))
    out = tmp_path / "out"
    args = ["--config-file", config, *common, "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0"]
    log = run(
        "train_net.py",
        args + ["SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", str(out)],
        ade_fixture,
    )
    assert "free pixels labelled by the teacher (store) until iteration 2" in log
    assert "iteration 0: training on the first-stage targets" in log
    assert "iteration 2: training on the student's own predictions" in log
    assert "copypaste: mIoU" in log
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert not any(k.startswith(("teacher.", "labeller.")) for k in state)
    assert "head.predictor.weight" in state
