"""Every shipped ZegCLIP config loads, builds (tiny random CLIP in place of the real one) and
runs one training step on a fixture ADE20K (the toy configs: on a tiny offline world); the
ViT-B/16 VOC model's learnable parameters are counted; train_net.py trains, evaluates and
hands its checkpoint to the transductive stage."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from ovseg_testing import ROOT, subprocess_env, write_ade20k_fixture
from zegclip_utils import TINY_VIT

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.events import EventStorage

from ovseg.data.datasets.common import datasets_root
from ovseg.data.datasets.register_ade20k import register_all_ade20k
from ovseg.data.datasets.toy_world import build_toy_world, register_all_toy_world
from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.modeling.meta_arch.zegclip import ZegCLIP

CONFIGS = sorted(ROOT.glob("configs/*/zegclip/*.yaml")) + sorted(
    ROOT.glob("configs/toy/zegclip*.yaml")
)
PROMPTS = {"voc": 10, "coco_stuff": 100, "pcontext": 100}
SMALL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.CLIP.MODEL_NAME", TINY_VIT,
    "MODEL.CLIP.PRETRAINED", "",
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
    "DATASETS.TRAIN", '("ade20k_sem_seg_train",)',
    "DATASETS.TEST", '("ade20k_sem_seg_val",)',
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ade_fixture(tmp_path_factory):
    root = write_ade20k_fixture(tmp_path_factory.mktemp("datasets"), n_train=2, n_val=1)
    register_all_ade20k(str(root))
    yield root
    register_all_ade20k(datasets_root())


@pytest.fixture(scope="module")
def toy_fixture(tmp_path_factory):
    # the toy configs name "background" (BG_EMBED), which ADE20K has not
    root = tmp_path_factory.mktemp("toy_datasets")
    build_toy_world(str(root), num_train=4, num_val=2, seed=0)
    register_all_toy_world(str(root))
    yield root
    register_all_toy_world(datasets_root())


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory):
    # shared: the seeded tiny CLIP has one fingerprint, so text embeddings are computed once
    return tmp_path_factory.mktemp("clip_cache")


def _rel(path) -> str:
    return str(path.relative_to(ROOT / "configs"))


def test_configs_found():
    assert len(CONFIGS) >= 15, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_config_recipe_and_one_step(path, ade_fixture, toy_fixture, clip_cache, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name files relative to the repository root
    cfg = load_config(str(path))
    dataset = path.parent.parent.name if path.parent.name == "zegclip" else "toy"
    assert cfg.MODEL.META_ARCHITECTURE == "ZegCLIP"
    assert cfg.MODEL.BACKBONE.NAME == "build_clip_vit_prompted_backbone"
    if cfg.MODEL.OVSEG.SELF_TRAINING.START_ITER >= 0 or "eval" in path.stem:
        # a later stage starts from the final weights of the inductive run
        if "eval" in path.stem:
            source = ROOT / "configs/coco_stuff/zegclip/zegclip_vitb16_inductive_80k_bs16.yaml"
        else:
            (source,) = path.parent.glob("zegclip_*_inductive_*.yaml")
        assert cfg.MODEL.WEIGHTS == os.path.join(
            load_config(str(source)).OUTPUT_DIR, "model_final.pth"
        )
        assert cfg.MODEL.ZEGCLIP.CALIBRATION == 0.0
    if dataset != "toy":  # the paper's recipe
        assert cfg.MODEL.CLIP.MODEL_NAME == "ViT-B-16" and cfg.MODEL.CLIP.PRETRAINED == "openai"
        source = "coco_stuff" if "eval" in path.stem else dataset
        assert cfg.MODEL.ZEGCLIP.NUM_PROMPTS == PROMPTS[source]
        assert cfg.SOLVER.BASE_LR == pytest.approx(2e-5) and cfg.SOLVER.IMS_PER_BATCH == 16
        assert cfg.SOLVER.WARMUP_ITERS == 1500 and cfg.SOLVER.WEIGHT_DECAY == 0.01
        assert tuple(cfg.TEST.SLIDE_WINDOW) == (512, 512) and cfg.TEST.INFERENCE_MODE == "slide"

    small = SMALL
    if dataset == "toy":
        small = SMALL[:-4] + [
            "DATASETS.TRAIN", '("toy_world_sem_seg_train",)',
            "DATASETS.TEST", '("toy_world_sem_seg_val",)',
        ]  # fmt: skip
    cfg = load_config(str(path), small)
    cfg.MODEL.CLIP.CACHE_DIR = str(clip_cache)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    assert isinstance(model, ZegCLIP)
    optimizer = Trainer.build_optimizer(cfg, model)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    # x10 on prompts (backbone) and on the decoder: one lr for every learnable parameter
    want = cfg.SOLVER.BASE_LR * 10
    assert {round(lr / want, 6) for lr in lrs.values()} == {1.0}
    assert len(lrs) == sum(p.requires_grad for p in model.parameters())

    batch = next(iter(Trainer.build_train_loader(cfg)))
    model.train()
    prompts = model.backbone.prompts.detach().clone()
    with EventStorage(start_iter=0):  # as a trainer: self-training reads the iteration
        losses = model(batch)
    loss = sum(losses.values())
    assert torch.isfinite(loss) and loss > 0
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert not torch.equal(prompts, model.backbone.prompts)


def test_vitb16_voc_learnable_parameter_count(tmp_path):
    cfg = load_config(
        str(ROOT / "configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml"),
        ["MODEL.DEVICE", "cpu", "MODEL.CLIP.PRETRAINED", "", "MODEL.CLIP.CACHE_DIR", str(tmp_path)],
    )
    model = Trainer.build_model(cfg)

    def count(module):
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    width, dim, blocks, prompts = 768, 512, 12, 10
    # deep prompts of every block, their projection, the output norm
    assert count(model.backbone) == blocks * prompts * width + width * width + width + 2 * width
    # relationship descriptor; two full layers (4 attention projections, 2 norms, FFN 4x);
    # the last layer's query and key projections
    layer = 4 * (dim * dim + dim) + 2 * 2 * dim + 2 * dim * 4 * dim + 4 * dim + dim
    assert count(model.decoder) == (2 * dim * dim + dim) + 2 * layer + 2 * (dim * dim + dim)
    # 8.04M receive gradients; the official model's 13.8M ("~14M") also count 5.78M
    # parameters it never uses (self-attention in each layer, the last layer's tail)
    assert count(model) == 8_039_168


@pytest.mark.slow
def test_train_net_trains_evaluates_and_self_trains(ade_fixture, tmp_path):
    out = tmp_path / "inductive"
    args = [
        "--config-file", "configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml",
        *SMALL,
        "MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache"),
        "SOLVER.MAX_ITER", "2",
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
    assert "copypaste: mIoU" in log and "loss_focal_0" in log
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert "backbone.prompts" in state and "decoder.q_proj.weight" in state
    assert not any(k.startswith(("teacher.", "backbone.tower.")) for k in state)

    # the transductive stage starts from these weights: every parameter is found
    cfg = load_config(
        str(ROOT / "configs/voc/zegclip/zegclip_vitb16_transductive_10k_bs16.yaml"),
        SMALL + ["MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache")],
    )
    model = Trainer.build_model(cfg)
    model.load_state_dict(state, strict=True)
    DetectionCheckpointer(model).load(str(out / "model_final.pth"))
    assert torch.equal(model.backbone.prompts, state["backbone.prompts"])
