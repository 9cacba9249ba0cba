"""The large-photo benchmark: both variants in their own processes, the same labels' sizes."""

import json

from ovseg_testing import run_script

from ovseg.benchmark.photo import measure_one


def test_each_variant_labels_the_photo_and_reports_its_peak():
    for variant in ("whole", "chunked"):
        res = measure_one(variant, [96, 128], "toy/maskclip.yaml", "", "circle,square", "cpu")
        assert res["variant"] == variant and res["classes"] == 2
        assert res["seconds"] > 0 and res["peak_gib"] >= 0


def test_the_command_of_performance_md_writes_both_and_their_ratios(tmp_path):
    out = tmp_path / "photo.json"
    args = ["--size", "96", "128", "--config", "toy/maskclip.yaml", "--opts", ""]
    args += ["--vocabulary", "circle,square,star", "--output", str(out)]
    log = run_script("-m", "ovseg.benchmark.photo", *args)
    res = json.loads(out.read_text())
    assert res["whole"]["classes"] == res["chunked"]["classes"] == 3
    assert set(res["chunked_over_whole"]) == {"seconds", "peak_gib"}
    assert "chunked:" in log and "whole:" in log
