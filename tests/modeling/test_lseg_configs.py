"""Every shipped LSeg config builds its model (tiny random CLIP in place of the real one) and
runs one training step on a fixture ADE20K; train_net.py trains and evaluates end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from lseg_utils import TINY_VIT
from ovseg_testing import ROOT, subprocess_env, write_ade20k_fixture

from ovseg.data.datasets.common import datasets_root
from ovseg.data.datasets.register_ade20k import register_all_ade20k
from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.modeling.meta_arch.lseg import LSeg

CONFIGS = sorted(ROOT.glob("configs/*/lseg/*.yaml")) + sorted(ROOT.glob("configs/toy/lseg*.yaml"))
SETTING = {"ade20k": "none", "voc": "inductive", "coco_stuff": "inductive"}
SETTING.update(pcontext="inductive", toy="inductive")
# the real-dataset configs' CLIP (ViT-B-16 openai) is replaced by the tiny random one; the
# toy configs keep the shipped toy CLIP (a few MB)
TINY_CLIP = ["MODEL.CLIP.MODEL_NAME", TINY_VIT, "MODEL.CLIP.PRETRAINED", ""]
SMALL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.VIT_BACKBONE.TIMM_MODEL", "vit_tiny_patch16_224",
    "MODEL.VIT_BACKBONE.TIMM_PRETRAINED", "",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "INPUT.CROP.SIZE", "(64, 64)",
    "INPUT.SIZE_DIVISIBILITY", "64",
    "INPUT.COLOR_AUG_SSD", "False",
    "TEST.SLIDE_WINDOW", "(64, 64)",
    "TEST.SLIDE_STRIDE", "(48, 48)",
]  # fmt: skip


@pytest.fixture(scope="module")
def ade_fixture(tmp_path_factory):
    root = write_ade20k_fixture(tmp_path_factory.mktemp("datasets"), n_train=2, n_val=1)
    register_all_ade20k(str(root))
    yield root
    register_all_ade20k(datasets_root())


def test_configs_found():
    assert len(CONFIGS) >= 6, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_builds_and_trains_one_step(path, ade_fixture, tmp_path):
    cfg = load_config(str(path))
    dataset = path.parent.parent.name if path.parent.name == "lseg" else "toy"
    assert cfg.MODEL.META_ARCHITECTURE == "LSeg"
    assert cfg.MODEL.OVSEG.ZERO_SHOT_SETTING == SETTING[dataset]
    if dataset != "toy":  # the paper's recipe: backbone 0.004, decoder 10x
        assert cfg.SOLVER.BASE_LR * cfg.SOLVER.BACKBONE_MULTIPLIER == pytest.approx(0.004)
        assert cfg.SOLVER.BACKBONE_MULTIPLIER == pytest.approx(0.1)
        assert cfg.MODEL.CLIP.PRETRAINED == "openai" and not cfg.SOLVER.AMP.ENABLED

    opts = SMALL + ["DATASETS.TRAIN", '("ade20k_sem_seg_train",)']
    cfg = load_config(str(path), opts + (TINY_CLIP if dataset != "toy" else []))
    cfg.MODEL.CLIP.CACHE_DIR = str(tmp_path)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    assert isinstance(model, LSeg)
    optimizer = Trainer.build_optimizer(cfg, model)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    ratio = lrs[id(next(model.decoder.parameters()))] / lrs[id(next(model.backbone.parameters()))]
    assert ratio == pytest.approx(1 / cfg.SOLVER.BACKBONE_MULTIPLIER)

    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert len(batch) == 2
    model.train()
    before = [p.detach().clone() for p in model.decoder.parameters()]
    loss = model(batch)["loss_sem_seg"]
    assert torch.isfinite(loss) and loss > 0
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.decoder.parameters()))


@pytest.mark.slow
def test_train_net_trains_and_evaluates(ade_fixture, tmp_path):
    out = tmp_path / "out"
    args = [
        "--config-file", "configs/ade20k/lseg/lseg_vitb16_80k_bs16.yaml",
        *SMALL,
        *TINY_CLIP,
        "MODEL.DPT.FEATURES", "16",
        "MODEL.DPT.REASSEMBLE_CHANNELS", "[8, 8, 16, 16]",
        "MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache"),
        "SOLVER.MAX_ITER", "3",
        "SOLVER.CHECKPOINT_PERIOD", "100",
        "TEST.EVAL_PERIOD", "0",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "train_net.py", *args],
        cwd=ROOT,
        env=subprocess_env(ade_fixture),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "copypaste: mIoU" in log
    assert (out / "model_final.pth").is_file()
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert not any(k.startswith("teacher.") for k in state) and "decoder.head.weight" in state
