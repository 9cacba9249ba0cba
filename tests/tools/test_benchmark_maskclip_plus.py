"""tools/benchmark.py maskclip_plus: one store step and one teacher-in-the-loop step."""

from __future__ import annotations

import importlib.util

from ovseg_testing import ROOT

TINY = [
    "MODEL.CLIP.MODEL_NAME", str(ROOT / "configs" / "clip" / "tiny_vit.json"),
    "MODEL.CLIP.TEMPLATES", "single",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.STEM_TYPE", "basic",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 1]",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "8",
    "INPUT.COLOR_AUG_SSD", "False",
]  # fmt: skip


def test_maskclip_plus_subcommand_times_both_sources(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_mcp", ROOT / "tools" / "benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["maskclip_plus", "--image-size", "40", "48", "--crop", "32", "--batch", "2"]
    args += ["--iters", "1", "--warmup", "0", "--device", "cpu", "--clock", "process"]
    res = bench.main(args + ["--cache-dir", str(tmp_path), *TINY])
    assert res["store_step_s"] > 0 and res["online_step_s"] > 0
    assert res["speedup_store_vs_online"] == res["online_step_s"] / res["store_step_s"]
    assert res["online_source"] == "online" and res["batch"] == 2
