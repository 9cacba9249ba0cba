"""A paper config evaluated at full size on a CPU: ``train_net.py --eval-only`` on the VOC
FreeSeg prompt stage's region test, with the config's real CLIP ViT-B/16 (random weights:
MODEL.CLIP.PRETRAINED "") on a one-image VOC 2012 written in its download layout and
converted by datasets/prepare_voc_sem_seg.py.

The main stages (FreeSeg's R101c Mask2Former with its CLIP ensemble, XPM's Mask R-CNN) take
minutes per image on a CPU and are measured, not tested: docs/reproduction.md, "Full-size
evaluation on the CPU".
"""

from __future__ import annotations

import math

from ovseg_testing import run_script
from ovseg_testing.fullsize import prepare_datasets

CONFIG = "configs/voc/freeseg/freeseg_prompt_vitb16_3200_bs32.yaml"


def test_voc_prompt_stage_region_test_at_full_size(tmp_path):
    datasets = prepare_datasets(tmp_path / "datasets", ["voc"])
    out = tmp_path / "run"
    log = run_script(
        "train_net.py",
        "--eval-only",
        "--config-file",
        CONFIG,
        "MODEL.DEVICE",
        "cpu",
        "MODEL.CLIP.PRETRAINED",
        "",
        "MODEL.WEIGHTS",  # the prompts as initialised, on purpose
        "",
        "OUTPUT_DIR",
        str(out),
        datasets=datasets,
        timeout=240,
    )
    # the real tower: ViT-B/16's 86M-parameter image tower was built, not a tiny one
    assert "'ViT-B-16' is randomly initialised" in log
    # the val image's three regions: cat, sofa (unseen in VOC 15/5) and dog
    assert "voc_sem_seg_val_regions (3 regions)" in log
    res = _summary(log, "voc_sem_seg_val_regions (3 regions)")
    for key in ("top1", "top5", "mACC", "top1-seen", "top1-unseen", "mACC-unseen"):
        assert math.isfinite(res[key]), key
    # 1 of 3 regions is unseen: accuracies move in steps of 1/3 overall, of 1 on unseen
    assert abs(res["top5"] * 3 / 100 - round(res["top5"] * 3 / 100)) < 1e-3  # 3 decimals
    assert res["top1-unseen"] in (0.0, 100.0)


def _summary(log: str, title: str) -> dict:
    """The metrics of the pipe table logged after ``title`` (create_small_table's)."""
    lines = log[log.index(title) :].splitlines()[1:4]
    keys, values = ([c.strip() for c in row.strip("|").split("|")] for row in (lines[0], lines[2]))
    return {k: float(v) for k, v in zip(keys, values)}
