"""make demo QUICK=1: the offline world end to end writes well-formed results."""

import json
import math
import subprocess

import pytest
from ovseg_testing import ROOT, subprocess_env

pytestmark = pytest.mark.slow

RUN_KEYS = ("mIoU-seen", "mIoU-unseen", "hIoU", "seconds")


def test_make_demo_quick(tmp_path):
    out, datasets = tmp_path / "demo", tmp_path / "datasets"
    proc = subprocess.run(
        ["make", "--no-print-directory", "demo", "QUICK=1",
         f"DEMO_ARGS=--output {out} --datasets-root {datasets}"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())

    assert res["split"] == "a" and res["seed"] == 0 and res["mode"] == "quick"
    # the shipped toy CLIP knows the shapes at image level, far above chance (12.5%)
    assert res["clip"]["zero_shot_accuracy"] >= 80
    teacher = res["teacher"]
    assert teacher["chance_accuracy"] == pytest.approx(12.5)
    assert teacher["object_pixel_accuracy"] > 2 * teacher["chance_accuracy"]
    assert 0 <= teacher["mIoU"] <= 100
    for name in ("oracle_masks_random_names", "uniform"):
        assert 0 <= res["baselines"][name]["mIoU-unseen"] <= 100
    # every student whose meta-architecture exists ran with both teachers
    assert {"lseg", "zegclip", "zegclip_transductive", "maskclip_plus"} <= set(res["students"])
    for runs in res["students"].values():
        for variant in ("teacher", "random_teacher"):
            for key in RUN_KEYS:
                value = runs[variant][key]
                assert isinstance(value, float) and not math.isnan(value), (variant, key)
    assert (out / "gallery.png").stat().st_size > 10_000
    assert "| lseg | toy CLIP |" in (out / "results.md").read_text()
