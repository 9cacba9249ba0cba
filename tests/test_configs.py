"""Every YAML under configs/, through one harness.

- The ``_BASE_`` chains: every chain is rooted at Base-ovseg.yaml, every ``Base-*.yaml`` is
  used by a leaf, and no file sets a key to the value its bases already give.
- Every leaf: its method's recipe (the paper's, outside configs/toy/), then built on CPU at a
  tiny size and run for one training step (training-free MaskCLIP: built, with its
  vocabulary). Real-dataset leaves swap their CLIP for the tiny random one of the same tower
  and train on a fixture ADE20K; toy leaves keep their toy CLIP and train on a toy world.
- train_net.py end to end, once per method (slow).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ovseg_testing import (
    CONFIGS,
    ROOT,
    TINY_RN,
    TINY_VIT,
    make_store,
    registered_ade20k,
    registered_toy_world,
    run_script,
    write_ade20k_fixture,
)
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage

from ovseg import add_ovseg_config
from ovseg.data.dataset_mappers import build_dataset_mapper
from ovseg.data.datasets import toy_world
from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.engine.pseudo_labelling import main as generate_pseudo_labels_main
from ovseg.engine.pseudo_labelling import parse_args as generate_pseudo_labels_args
from ovseg.modeling.meta_arch.maskclip_plus_build import scored_names

ROOT_BASE = CONFIGS / "Base-ovseg.yaml"
FILES = sorted(CONFIGS.rglob("*.yaml"))
BASES = [p for p in FILES if p.name.startswith("Base-")]
LEAVES = [p for p in FILES if not p.name.startswith("Base-")]
# a leaf's method: its folder (configs/<dataset>/<folder>/) or, in configs/toy/, its name's start
FOLDERS = {
    "lseg": "LSeg",
    "zegclip": "ZegCLIP",
    "maskclip": "MaskCLIP",
    "maskclip_plus": "MaskCLIPPlus",
    "baseline": "SemanticSegmentor",
}
MIN_LEAVES = {"LSeg": 6, "ZegCLIP": 15, "MaskCLIP": 8, "MaskCLIPPlus": 6, "SemanticSegmentor": 2}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rel(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def _dataset(path: Path) -> str:
    return path.relative_to(CONFIGS).parts[0]


def _folder(path: Path) -> str:
    if _dataset(path) != "toy":
        return path.parent.name
    return max((f for f in FOLDERS if path.stem.startswith(f)), key=len, default=path.stem)


# ---------------------------------------------------------------- the _BASE_ chains
@functools.cache
def _own(path: Path) -> dict:
    """The file's own keys (parsed once per session: do not modify)."""
    return yaml.safe_load(path.read_text()) or {}


def _chain(path: Path) -> list[Path]:
    """``path``, its base, its base's base... up to the root."""
    chain = [path]
    while "_BASE_" in _own(chain[-1]):
        chain.append((chain[-1].parent / _own(chain[-1])["_BASE_"]).resolve())
    return chain


def _keys(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _keys(value, f"{prefix}{key}.")
        elif key != "_BASE_":
            yield prefix + key


@functools.cache
def _merged(path: Path):
    """detectron2's and ovseg's defaults plus ``path``'s chain, without load_config's CPU
    fallback (which would make "cuda" and "cpu" look equal); merged once per session, frozen."""
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.freeze()
    return cfg


def _value(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_every_chain_is_rooted_at_base_ovseg():
    roots = {_rel(p): _rel(_chain(p)[-1]) for p in FILES}
    assert {p: r for p, r in roots.items() if r != _rel(ROOT_BASE)} == {}


def test_every_base_is_used_by_a_leaf():
    used = {base for leaf in LEAVES for base in _chain(leaf)[1:]}
    assert sorted(_rel(p) for p in BASES if p not in used) == []


def test_no_file_sets_a_key_its_bases_already_give():
    restated = {}
    for path in FILES:
        bases = _chain(path)[1:]
        if not bases:
            continue
        set_by_bases = {key for base in bases for key in _keys(_own(base))}
        parent, child = _merged(bases[0]), _merged(path)
        same = [
            f"{key} = {_value(child, key)!r}"
            for key in _keys(_own(path))
            if key in set_by_bases and _value(child, key) == _value(parent, key)
        ]
        if same:
            restated[_rel(path)] = same
    assert restated == {}, f"keys set to what the _BASE_ chain already gives: {restated}"


def test_every_method_has_its_configs():
    archs = [_merged(p).MODEL.META_ARCHITECTURE for p in LEAVES]
    for arch, least in MIN_LEAVES.items():
        assert archs.count(arch) >= least, f"{arch}: {archs.count(arch)} leaves"


# ---------------------------------------------------------------- recipes, one per method
LSEG_SETTINGS = {"ade20k": "none", "voc": "inductive", "coco_stuff": "inductive"}
LSEG_SETTINGS.update(pcontext="inductive", toy="inductive")


def _lseg_recipe(path: Path, cfg) -> None:
    assert cfg.MODEL.OVSEG.ZERO_SHOT_SETTING == LSEG_SETTINGS[_dataset(path)]
    if _dataset(path) != "toy":  # the paper's recipe: backbone 0.004, decoder 10x
        assert cfg.SOLVER.BASE_LR * cfg.SOLVER.BACKBONE_MULTIPLIER == pytest.approx(0.004)
        assert cfg.SOLVER.BACKBONE_MULTIPLIER == pytest.approx(0.1)
        assert cfg.MODEL.CLIP.PRETRAINED == "openai" and not cfg.SOLVER.AMP.ENABLED


ZEGCLIP_PROMPTS = {"voc": 10, "coco_stuff": 100, "pcontext": 100}
ZEGCLIP_COCO = CONFIGS / "coco_stuff/zegclip/zegclip_vitb16_inductive_80k_bs16.yaml"


def _zegclip_recipe(path: Path, cfg) -> None:
    assert cfg.MODEL.BACKBONE.NAME == "build_clip_vit_prompted_backbone"
    evaluation = "eval" in path.stem
    if cfg.MODEL.OVSEG.SELF_TRAINING.START_ITER >= 0 or evaluation:
        # a later stage starts from the final weights of the inductive run
        source = ZEGCLIP_COCO if evaluation else min(path.parent.glob("zegclip_*_inductive_*"))
        final = os.path.join(_merged(source).OUTPUT_DIR, "model_final.pth")
        assert cfg.MODEL.WEIGHTS == final
        assert cfg.MODEL.ZEGCLIP.CALIBRATION == 0.0
    if _dataset(path) != "toy":  # the paper's recipe
        assert cfg.MODEL.CLIP.MODEL_NAME == "ViT-B-16" and cfg.MODEL.CLIP.PRETRAINED == "openai"
        source = "coco_stuff" if evaluation else _dataset(path)
        assert cfg.MODEL.ZEGCLIP.NUM_PROMPTS == ZEGCLIP_PROMPTS[source]
        assert cfg.SOLVER.BASE_LR == pytest.approx(2e-5) and cfg.SOLVER.IMS_PER_BATCH == 16
        assert cfg.SOLVER.WARMUP_ITERS == 1500 and cfg.SOLVER.WEIGHT_DECAY == 0.01
        assert tuple(cfg.TEST.SLIDE_WINDOW) == (512, 512) and cfg.TEST.INFERENCE_MODE == "slide"


MASKCLIP_CLASSES = {"voc": 20, "pcontext": 59, "coco_stuff": 171, "ade20k": 150, "toy": 9}


def _maskclip_recipe(path: Path, cfg) -> None:
    assert cfg.TEST.INFERENCE_MODE == "whole"
    refinements = (cfg.MODEL.MASKCLIP.PROMPT_DENOISE, cfg.MODEL.MASKCLIP.KEY_SMOOTHING)
    if _dataset(path) == "toy":  # none: the toy images are too small for them to help
        assert refinements == (False, False)
        return
    assert cfg.MODEL.CLIP.MODEL_NAME == ("RN50" if "rn50" in path.name else "ViT-B-16")
    assert cfg.MODEL.CLIP.PRETRAINED == "openai" and cfg.MODEL.CLIP.TEMPLATES == "maskclip85"
    assert refinements == (True, True)


# the official schedules: teacher labels, then self-training (annotation-free: teacher only)
MASKCLIP_PLUS_SCHEDULES = {
    ("voc", "transductive"): (2000, 20000),
    ("pcontext", "transductive"): (4000, 40000),
    ("coco_stuff", "transductive"): (8000, 80000),
    ("voc", "annofree"): (-1, 2000),
    ("pcontext", "annofree"): (-1, 4000),
    ("coco_stuff", "annofree"): (-1, 8000),
}


def _maskclip_plus_recipe(path: Path, cfg) -> None:
    if _dataset(path) == "toy":
        return
    free = cfg.MODEL.MASKCLIP_PLUS.ANNOTATION_FREE
    schedule = MASKCLIP_PLUS_SCHEDULES[(_dataset(path), "annofree" if free else "transductive")]
    assert (cfg.MODEL.OVSEG.SELF_TRAINING.START_ITER, cfg.SOLVER.MAX_ITER) == schedule
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.OPTIMIZER == "SGD"
    assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.CLIP.PRETRAINED == "openai"
    assert cfg.MODEL.OVSEG.ZERO_SHOT_SETTING == ("none" if free else "transductive")


def _baseline_recipe(path: Path, cfg) -> None:
    # closed vocabulary: one output per class of its training set
    classes = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).stuff_classes
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == len(classes) == 150
    assert cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 255


RECIPES = {
    "LSeg": _lseg_recipe,
    "ZegCLIP": _zegclip_recipe,
    "MaskCLIP": _maskclip_recipe,
    "MaskCLIPPlus": _maskclip_plus_recipe,
    "SemanticSegmentor": _baseline_recipe,
}


# ---------------------------------------------------------------- one step at a tiny size
CPU = [
    "MODEL.DEVICE", "cpu",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "INPUT.COLOR_AUG_SSD", "False",
]  # fmt: skip
CROP_64 = ["INPUT.CROP.SIZE", "(64, 64)", "INPUT.SIZE_DIVISIBILITY", "64"]
SLIDE_64 = ["TEST.SLIDE_WINDOW", "(64, 64)", "TEST.SLIDE_STRIDE", "(48, 48)"]
ADE = ["DATASETS.TRAIN", '("ade20k_sem_seg_train",)', "DATASETS.TEST", '("ade20k_sem_seg_val",)']
# each method's sizes on top of CPU
SMALL = {
    "LSeg": [
        *CROP_64, *SLIDE_64,
        "MODEL.VIT_BACKBONE.TIMM_MODEL", "vit_tiny_patch16_224",
        "MODEL.VIT_BACKBONE.TIMM_PRETRAINED", "",
    ],
    "ZegCLIP": [*CROP_64, *SLIDE_64],
    "MaskCLIP": [],
    "MaskCLIPPlus": [
        "MODEL.CLIP.TEMPLATES", "single",
        "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
        "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16",
        "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", "[8]",
        "INPUT.CROP.SIZE", "(48, 48)",
    ],
    "SemanticSegmentor": [
        *CROP_64,
        "MODEL.WEIGHTS", "",
        "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    ],
}  # fmt: skip
# the parameters a training step must change
LEARNERS = {
    "LSeg": lambda model: list(model.decoder.parameters()),
    "ZegCLIP": lambda model: [model.backbone.prompts],
    "MaskCLIPPlus": lambda model: list(model.head.parameters()),
    "SemanticSegmentor": lambda model: list(model.sem_seg_head.parameters()),
}


def _is_resnet(clip_name: str) -> bool:
    """A CLIP with a ModifiedResNet image tower: RN50, configs/clip/{tiny,toy}_rn.json."""
    return Path(clip_name).stem.lower().startswith(("rn", "tiny_rn", "toy_rn"))


def _tiny_clip(cfg) -> list[str]:
    tiny = TINY_RN if _is_resnet(cfg.MODEL.CLIP.MODEL_NAME) else TINY_VIT
    return ["MODEL.CLIP.MODEL_NAME", str(tiny), "MODEL.CLIP.PRETRAINED", ""]


def _small_cfg(path: Path, cfg, cache: Path):
    """``path`` at CPU size: the tiny CLIP of its tower and, for a leaf that trains, the ADE
    fixture; a toy leaf keeps its toy CLIP and toy world."""
    arch = cfg.MODEL.META_ARCHITECTURE
    opts = CPU + SMALL[arch] + ["MODEL.CLIP.CACHE_DIR", str(cache)]
    if _dataset(path) != "toy":
        opts += _tiny_clip(cfg) + (ADE if arch in LEARNERS else [])
    return load_config(str(path), opts)


def _check_learning_rates(cfg, model, optimizer) -> None:
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "LSeg":  # the decoder at 1 / BACKBONE_MULTIPLIER times the backbone's lr
        decoder, backbone = next(model.decoder.parameters()), next(model.backbone.parameters())
        ratio = lrs[id(decoder)] / lrs[id(backbone)]
        assert ratio == pytest.approx(1 / cfg.SOLVER.BACKBONE_MULTIPLIER)
    if arch == "ZegCLIP":  # x10 on prompts (backbone) and decoder: one lr for every parameter
        want = cfg.SOLVER.BASE_LR * 10
        assert {round(lr / want, 6) for lr in lrs.values()} == {1.0}
        assert len(lrs) == sum(p.requires_grad for p in model.parameters())


def _fill_store(root: Path, cfg) -> str:
    """A store for the training set's images over the classes ``cfg`` scores."""
    names = scored_names(cfg)
    threshold = cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_THRESHOLD
    store = make_store(root, names, threshold=threshold, dataset=cfg.DATASETS.TRAIN[0])
    for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0]):  # 64x64 images, as the fixtures'
        store.write(d["image_id"], np.full((64, 64), len(names) - 1), np.ones((64, 64)))
    return str(root)


def _one_training_step(cfg, learner) -> None:
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    _check_learning_rates(cfg, model, optimizer)
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert len(batch) == 2
    model.train()
    before = [p.detach().clone() for p in learner(model)]
    with EventStorage(start_iter=0):  # as a trainer: self-training reads the iteration
        losses = model(batch)
    loss = sum(losses.values())
    assert torch.isfinite(loss) and loss > 0
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, learner(model)))


def _maskclip_builds(path: Path, cfg, shipped_clip: str) -> None:
    model = Trainer.build_model(cfg)
    assert model.teacher.tower == ("resnet" if _is_resnet(shipped_clip) else "vit")
    assert len(model.vocabulary) == MASKCLIP_CLASSES[_dataset(path)]
    assert list(model.vocabulary) == MetadataCatalog.get(cfg.DATASETS.TEST[0]).stuff_classes
    assert len(model.templates) == (1 if _dataset(path) == "toy" else 85)


@pytest.fixture(scope="module")
def ade_fixture(tmp_path_factory):
    root = write_ade20k_fixture(tmp_path_factory.mktemp("datasets"), n_train=2, n_val=1)
    with registered_ade20k(root):
        yield root


@pytest.fixture(scope="module")
def toy_fixture(tmp_path_factory):
    with registered_toy_world(tmp_path_factory.mktemp("toy_datasets")) as root:
        yield root


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory):
    # shared: a seeded CLIP has one fingerprint, so its text embeddings are computed once
    return tmp_path_factory.mktemp("clip_cache")


@pytest.mark.parametrize("path", LEAVES, ids=_rel)
def test_leaf_recipe_and_one_step(
    path, ade_fixture, toy_fixture, clip_cache, tmp_path, monkeypatch
):
    monkeypatch.chdir(ROOT)  # configs name files relative to the repository root
    cfg = _merged(path)
    arch = cfg.MODEL.META_ARCHITECTURE
    assert arch == FOLDERS.get(_folder(path)), f"{_rel(path)} ({arch}) sits with {_folder(path)}"
    RECIPES[arch](path, cfg)

    shipped_clip = cfg.MODEL.CLIP.MODEL_NAME
    cfg = _small_cfg(path, cfg, clip_cache)
    if arch == "MaskCLIP":
        _maskclip_builds(path, cfg, shipped_clip)
        return
    if arch == "MaskCLIPPlus" and cfg.MODEL.MASKCLIP_PLUS.PSEUDO_LABEL_SOURCE == "store":
        cfg.DATASETS.PSEUDO_LABELS = _fill_store(tmp_path / "store", cfg)
    _one_training_step(cfg, LEARNERS[arch])


# ---------------------------------------------------------------- method-specific checks
def test_every_dataset_ships_both_maskclip_configs():
    names = {(_dataset(p), p.name) for p in LEAVES if p.parent.name == "maskclip"}
    datasets = set(MASKCLIP_CLASSES) - {"toy"}
    assert names == {
        (d, f"maskclip_{clip}_bs1.yaml") for d in datasets for clip in ("vitb16", "rn50")
    }


def test_zegclip_vitb16_voc_learnable_parameter_count(tmp_path):
    cfg = load_config(
        str(CONFIGS / "voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml"),
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


def test_toy_base_maps_a_training_sample_with_unseen_ignored(toy_fixture):
    cfg = load_config(str(CONFIGS / "toy/Base-toy.yaml"))
    mapper = build_dataset_mapper(cfg, is_train=True)
    seen = [c for c in toy_world.CLASSES if c not in ("triangle", "ring")]
    for d in DatasetCatalog.get("toy_world_sem_seg_train"):
        label = np.asarray(Image.open(d["sem_seg_file_name"]))
        out = mapper(dict(d))
        assert out["image"].shape == (3, 64, 64)
        assert out["vocabulary"] == seen
        unseen_pixels = np.isin(label, [3, 5]).sum()  # triangle, ring
        assert int((out["sem_seg"] == 255).sum()) == unseen_pixels


# ---------------------------------------------------------------- train_net.py end to end
def _train_net(config: str, *opts: str, datasets: Path) -> str:
    return run_script("train_net.py", "--config-file", config, *opts, datasets=datasets)


def _cpu_opts(arch: str, cache: Path, *extra: str) -> list[str]:
    return [*CPU, *SMALL[arch], "MODEL.CLIP.CACHE_DIR", str(cache), *extra]


@pytest.mark.slow
def test_train_net_lseg_trains_and_evaluates(ade_fixture, tmp_path):
    out = tmp_path / "out"
    opts = _cpu_opts(
        "LSeg", tmp_path / "cache",
        "MODEL.CLIP.MODEL_NAME", str(TINY_VIT), "MODEL.CLIP.PRETRAINED", "",
        "MODEL.DPT.FEATURES", "16", "MODEL.DPT.REASSEMBLE_CHANNELS", "[8, 8, 16, 16]",
        "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0",
        "OUTPUT_DIR", str(out),
    )  # fmt: skip
    log = _train_net("configs/ade20k/lseg/lseg_vitb16_80k_bs16.yaml", *opts, datasets=ade_fixture)
    assert "copypaste: mIoU" in log
    assert (out / "model_final.pth").is_file()
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert not any(k.startswith("teacher.") for k in state) and "decoder.head.weight" in state


@pytest.mark.slow
def test_train_net_zegclip_trains_evaluates_and_self_trains(ade_fixture, tmp_path):
    out = tmp_path / "inductive"
    small = _cpu_opts(
        "ZegCLIP", tmp_path / "cache", *ADE,
        "MODEL.CLIP.MODEL_NAME", str(TINY_VIT), "MODEL.CLIP.PRETRAINED", "",
    )  # fmt: skip
    opts = ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0"]
    config = "configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml"
    log = _train_net(config, *small, *opts, "OUTPUT_DIR", str(out), datasets=ade_fixture)
    assert "copypaste: mIoU" in log and "loss_focal_0" in log
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert "backbone.prompts" in state and "decoder.q_proj.weight" in state
    assert not any(k.startswith(("teacher.", "backbone.tower.")) for k in state)

    # the transductive stage starts from these weights: every parameter is found
    cfg = load_config(str(CONFIGS / "voc/zegclip/zegclip_vitb16_transductive_10k_bs16.yaml"), small)
    model = Trainer.build_model(cfg)
    model.load_state_dict(state, strict=True)
    DetectionCheckpointer(model).load(str(out / "model_final.pth"))
    assert torch.equal(model.backbone.prompts, state["backbone.prompts"])


@pytest.mark.slow
def test_train_net_maskclip_evaluates_without_weights(ade_fixture, tmp_path):
    opts = [
        "--eval-only",
        "MODEL.CLIP.MODEL_NAME", "configs/clip/tiny_vit.json",
        "MODEL.CLIP.PRETRAINED", '""',
        "MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache"),
        "MODEL.CLIP.TEMPLATES", "single",
        "MODEL.DEVICE", "cpu",
        "DATALOADER.NUM_WORKERS", "0",
        "INPUT.MIN_SIZE_TEST", "48",
        "INPUT.MAX_SIZE_TEST", "48",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ]  # fmt: skip
    log = _train_net(
        "configs/ade20k/maskclip/maskclip_vitb16_bs1.yaml", *opts, datasets=ade_fixture
    )
    assert "copypaste: mIoU" in log
    assert "No checkpoint found" in log  # no student weights needed


@pytest.mark.slow
def test_train_net_maskclip_plus_from_a_generated_store(ade_fixture, tmp_path):
    """The store made by tools/generate_pseudo_labels.py trains the student through
    train_net.py, which switches to self-training at SELF_TRAINING.START_ITER and evaluates."""
    config = "configs/coco_stuff/maskclip_plus/" + (
        "maskclip_plus_vitb16_r101_deeplabv2_transductive_80k_bs16.yaml"
    )
    tiny = ["MODEL.CLIP.MODEL_NAME", str(TINY_VIT), "MODEL.CLIP.PRETRAINED", ""]
    common = _cpu_opts(
        "MaskCLIPPlus", tmp_path / "cache", *ADE, *tiny,
        "MODEL.RESNETS.DEPTH", "50",
        "MODEL.RESNETS.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.NORM", "BN",
        "MODEL.OVSEG.SELF_TRAINING.START_ITER", "2",
        "DATASETS.PSEUDO_LABELS", str(tmp_path / "store"),
    )  # fmt: skip
    unseen = tmp_path / "unseen.json"  # ADE names hold commas: a JSON list, not a comma list
    unseen.write_text(json.dumps(list(scored_names(load_config(config, common)))))
    # the generation tool in this process (one interpreter start less), as its __main__ runs it
    args = ["--config-file", config, "--output", str(tmp_path / "store"), "--no-progress"]
    args += [*common, "MODEL.META_ARCHITECTURE", "MaskCLIP", "MODEL.OVSEG.TEST_VOCABULARY"]
    args += [str(unseen), "OUTPUT_DIR", str(tmp_path / "gen")]
    stats = generate_pseudo_labels_main(generate_pseudo_labels_args(args))
    assert stats["written"] == len(DatasetCatalog.get("ade20k_sem_seg_train"))
    out = tmp_path / "out"
    opts = ["SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "100"]
    log = _train_net(config, *common, *opts, "OUTPUT_DIR", str(out), datasets=ade_fixture)
    assert "free pixels labelled by the teacher (store) until iteration 2" in log
    assert "iteration 0: training on the first-stage targets" in log
    assert "iteration 2: training on the student's own predictions" in log
    assert "copypaste: mIoU" in log
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert not any(k.startswith(("teacher.", "labeller.")) for k in state)
    assert "head.predictor.weight" in state
