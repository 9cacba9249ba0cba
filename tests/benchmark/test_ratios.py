"""The interleaved ratio benchmark: both variants timed in turns, the evaluator's work real."""

import json
import subprocess
import sys

from ovseg_testing import ROOT, subprocess_env

from ovseg.benchmark.ratios import evaluator_ratio, interleaved

MAPPER_CONFIG = "configs/toy/lseg_toyrn_400_bs8.yaml"


def test_interleaved_times_both_in_turns():
    calls = []
    res = interleaved(lambda: calls.append("a"), lambda: calls.append("b"), repeats=3)
    assert calls == ["a", "b"] * 4  # one untimed call of each, then turns
    assert res["a_s"] >= 0 and res["b_s"] >= 0 and res["repeats"] == 3


def test_evaluator_ratio_on_tiny_arrays():
    res = evaluator_ratio(size=16, classes=4, images=2, repeats=2)
    assert res["a_s"] > 0 and res["b_s"] > 0 and res["b_over_a"] > 0
    assert res["argmax_then_bincount"]["b_s"] > 0 and res["a_mpix_per_s"] > 0


def test_the_command_of_performance_md_prints_and_writes_each_pair(tmp_path):
    # docs/performance.md's `python -m ovseg.benchmark.ratios`, on the tiny teacher and
    # the toy mapper (the MaskCLIP+ store pair builds two R101 students: minutes here)
    out = tmp_path / "ratios.json"
    args = ["--only", "evaluator", "teacher", "mapper", "--repeats", "1", "--mapper-images", "1"]
    args += ["--teacher-model", "configs/clip/tiny_vit.json", "--teacher-size", "64"]
    args += ["--mapper-configs", MAPPER_CONFIG, "--output", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "ovseg.benchmark.ratios", *args],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    pairs = {"teacher": "dense_embeddings", "evaluator": "np.bincount"}
    pairs[f"mapper {MAPPER_CONFIG}"] = "mapper"
    for pair, b in pairs.items():
        assert res[pair]["b"] == b and res[pair]["b_over_a"] == res[pair]["b_s"] / res[pair]["a_s"]
        assert f"{pair}: " in proc.stdout + proc.stderr, pair
    assert res["evaluator"]["b_over_a"] < 1  # a bare bincount skips the argmax
    assert res["threads"] == 1
