"""train_net.py end to end on a fixture ADE20K: the closed-vocabulary baseline trains,
evaluates, resumes and runs two gloo processes; each open-vocabulary method once (the
shipped configs shrunk as in tests/test_configs.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from ovseg_testing import (
    ADE20K_OPTS,
    CONFIGS,
    ROOT,
    cpu_opts,
    run_script,
    subprocess_env,
    tiny_clip_opts,
)

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog

from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.engine.pseudo_labelling import main as generate_pseudo_labels_main
from ovseg.engine.pseudo_labelling import parse_args as generate_pseudo_labels_args
from ovseg.modeling.meta_arch.maskclip_plus_build import scored_names

pytestmark = pytest.mark.slow

CONFIG = "configs/ade20k/baseline/semfpn_r18_80k_bs16.yaml"
SMALL = [
    "MODEL.DEVICE",
    "cpu",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.BASE_LR",
    "0.01",
    "SOLVER.WARMUP_ITERS",
    "0",
    "SOLVER.CHECKPOINT_PERIOD",
    "2",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "64",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "64",
    "INPUT.CROP.SIZE",
    "(64, 64)",
    "INPUT.SIZE_DIVISIBILITY",
    "64",
    "INPUT.COLOR_AUG_SSD",
    "False",
    "MODEL.FPN.OUT_CHANNELS",
    "32",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM",
    "32",
    "TEST.EVAL_PERIOD",
    "0",
]


def run_train_net(args, datasets_root):
    return run_script("train_net.py", *args, datasets=datasets_root)


def read_metrics(out_dir):
    lines = (out_dir / "metrics.json").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_help():
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--help"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--config-file" in proc.stdout and "--eval-only" in proc.stdout
    # ovseg's examples, not detectron2's generic "train_net.py --num-gpus 8 --config-file cfg.yaml"
    assert "configs/toy/lseg_toyrn_400_bs8.yaml" in proc.stdout, proc.stdout
    assert "cfg.yaml" not in proc.stdout and "gloo" in proc.stdout


def test_train_evaluate_resume(ade20k_root, tmp_path):
    out = tmp_path / "out"
    log = run_train_net(
        ["--config-file", CONFIG, *SMALL, "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(out)],
        ade20k_root,
    )
    # final evaluation ran through ovseg's evaluator and printed detectron2's copypaste lines
    assert "copypaste: mIoU" in log
    iters = [m["iteration"] for m in read_metrics(out) if "total_loss" in m]
    assert iters and max(iters) == 3
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"

    # --resume continues from the last checkpoint instead of starting over
    log = run_train_net(
        [
            "--config-file",
            CONFIG,
            "--resume",
            *SMALL,
            "SOLVER.MAX_ITER",
            "6",
            "OUTPUT_DIR",
            str(out),
        ],
        ade20k_root,
    )
    assert "Starting training from iteration 4" in log
    iters = [m["iteration"] for m in read_metrics(out) if "total_loss" in m]
    assert max(iters) == 5

    # --eval-only loads the trained weights and evaluates
    log = run_train_net(
        [
            "--config-file",
            CONFIG,
            "--eval-only",
            *SMALL,
            "OUTPUT_DIR",
            str(tmp_path / "ev"),
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
        ],
        ade20k_root,
    )
    assert "copypaste: mIoU" in log


def test_two_process_gloo(ade20k_root, tmp_path):
    out = tmp_path / "ddp"
    log = run_train_net(
        [
            "--config-file",
            CONFIG,
            "--num-gpus",
            "2",
            *SMALL,
            "SOLVER.MAX_ITER",
            "2",
            "OUTPUT_DIR",
            str(out),
        ],
        ade20k_root,
    )
    assert "copypaste: mIoU" in log
    assert (out / "model_final.pth").is_file()


@pytest.mark.parametrize("before", [[], ["--opts"]], ids=["pairs", "after_opts"])
def test_config_mistakes_end_in_one_line(tmp_path, before):
    """Trailing KEY VALUE pairs, also after ``--opts`` (demo.py's form), reach the config."""
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", CONFIG, *before, "SOLVER.MAX_ITR", "1"],
        cwd=ROOT,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "train_net.py: error: SOLVER.MAX_ITR (set in the overrides)" in proc.stderr
    assert "did you mean SOLVER.MAX_ITER" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_dataset_names_path(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "train_net.py",
            "--config-file",
            CONFIG,
            *SMALL,
            "SOLVER.MAX_ITER",
            "1",
            "OUTPUT_DIR",
            str(tmp_path / "o"),
        ],
        cwd=ROOT,
        env=subprocess_env(tmp_path / "nowhere"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert str(tmp_path / "nowhere" / "ADEChallengeData2016") in proc.stderr


# ---------------------------------------------------------------- each method once
def test_train_net_lseg_trains_and_evaluates(small_ade20k, tmp_path):
    out = tmp_path / "out"
    opts = cpu_opts(
        "LSeg", tmp_path / "cache",
        *tiny_clip_opts(),
        "MODEL.DPT.FEATURES", "16", "MODEL.DPT.REASSEMBLE_CHANNELS", "[8, 8, 16, 16]",
        "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0",
        "OUTPUT_DIR", str(out),
    )  # fmt: skip
    config = "configs/ade20k/lseg/lseg_vitb16_80k_bs16_ovseg-variant.yaml"
    log = run_train_net(["--config-file", config, *opts], small_ade20k)
    assert "copypaste: mIoU" in log
    assert (out / "model_final.pth").is_file()
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert not any(k.startswith("teacher.") for k in state) and "decoder.head.weight" in state


def test_train_net_zegclip_trains_evaluates_and_self_trains(small_ade20k, tmp_path):
    out = tmp_path / "inductive"
    small = cpu_opts("ZegCLIP", tmp_path / "cache", *ADE20K_OPTS, *tiny_clip_opts())
    opts = ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0"]
    # ovseg's variant: every decoder layer supervised (loss_focal_0...), and its transductive
    # stage starts from the final weights this run writes
    config = "configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16_ovseg-variant.yaml"
    log = run_train_net(
        ["--config-file", config, *small, *opts, "OUTPUT_DIR", str(out)], small_ade20k
    )
    assert "copypaste: mIoU" in log and "loss_focal_0" in log
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert "backbone.prompts" in state and "decoder.q_proj.weight" in state
    assert not any(k.startswith(("teacher.", "backbone.tower.")) for k in state)

    # the transductive stage starts from these weights: every parameter is found
    second = CONFIGS / "voc/zegclip/zegclip_vitb16_transductive_10k_bs16_ovseg-variant.yaml"
    cfg = load_config(str(second), small)
    model = Trainer.build_model(cfg)
    model.load_state_dict(state, strict=True)
    DetectionCheckpointer(model).load(str(out / "model_final.pth"))
    assert torch.equal(model.backbone.prompts, state["backbone.prompts"])


def test_train_net_maskclip_evaluates_without_weights(small_ade20k, tmp_path):
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
    config = "configs/ade20k/maskclip/maskclip_vitb16_bs1.yaml"
    log = run_train_net(["--config-file", config, *opts], small_ade20k)
    assert "copypaste: mIoU" in log
    assert "No checkpoint found" in log  # no student weights needed


def test_train_net_maskclip_plus_from_a_generated_store(small_ade20k, tmp_path):
    """The store made by tools/generate_pseudo_labels.py trains the student through
    train_net.py, which switches to self-training at SELF_TRAINING.START_ITER and evaluates."""
    config = "configs/coco_stuff/maskclip_plus/" + (
        "maskclip_plus_vitb16_r101_deeplabv2_transductive_80k_bs16_ovseg-variant.yaml"
    )
    common = cpu_opts(
        "MaskCLIPPlus", tmp_path / "cache", *ADE20K_OPTS, *tiny_clip_opts(),
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
    log = run_train_net(
        ["--config-file", config, *common, *opts, "OUTPUT_DIR", str(out)], small_ade20k
    )
    assert "free pixels labelled by the teacher (store) until iteration 2" in log
    assert "iteration 0: training on the first-stage targets" in log
    assert "iteration 2: training on the student's own predictions" in log
    assert "copypaste: mIoU" in log
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert not any(k.startswith(("teacher.", "labeller.")) for k in state)
    assert "head.predictor.weight" in state
