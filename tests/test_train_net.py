"""train_net.py end to end on a fixture ADE20K: train, evaluate, resume, two gloo processes."""

import json
import subprocess
import sys

import pytest
from ovseg_testing import ROOT, run_script, subprocess_env

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
