"""tools/benchmark.py as a command: `train` on a toy config for a couple of iterations and
`pseudo` over a toy world, each printing its JSON results and writing them to --output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ovseg_testing import ROOT, subprocess_env

from ovseg.data.datasets.toy_world import build_toy_world

TOOL = str(ROOT / "tools" / "benchmark.py")


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_datasets")
    build_toy_world(str(root), num_train=6, num_val=2, seed=0)
    return root


def _run(args, datasets, tmp_path):
    out = tmp_path / "results" / "bench.json"
    proc = subprocess.run(
        [sys.executable, TOOL, *args[:1], "--output", str(out), *args[1:]],
        cwd=ROOT,
        env=subprocess_env(datasets),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = json.loads(proc.stdout)  # stdout is the JSON; the summary goes to stderr
    assert json.loads(out.read_text()) == printed
    return printed, proc.stderr


def test_train_times_a_toy_config(toy_root, tmp_path):
    config = "configs/toy/lseg_toyrn_400_bs8.yaml"
    args = ["train", "--config-file", config, "--batch", "2", "--iters", "2", "--warmup", "1"]
    args += ["--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "SOLVER.BASE_LR", "0.01"]
    res, summary = _run(args, toy_root, tmp_path)
    assert res["config"] == config and res["opts"] == ["SOLVER.BASE_LR", "0.01"]
    assert (res["meta_architecture"], res["data"], res["device"]) == ("LSeg", "loader", "cpu")
    assert (res["batch"], res["iters"], res["warmup"]) == (2, 2, 1)
    for key in ("it_per_s", "images_per_s", "s_per_iter", "peak_memory_gib", "flops_per_iter"):
        assert res[key] > 0, (key, res[key])
    assert res["images_per_s"] == pytest.approx(2 * res["it_per_s"])
    assert 0 < res["data_share"] < 1
    assert res["mfu"] is None  # no peak FLOP/s known for a CPU
    assert "LSeg training" in summary and "waiting for data" in summary


def test_pseudo_labels_a_toy_world(toy_root, tmp_path):
    args = ["pseudo", "--config-file", "configs/toy/maskclip.yaml", "--limit", "4"]
    args += ["--warmup", "1", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    res, summary = _run(args, toy_root, tmp_path)
    assert (res["meta_architecture"], res["dataset"]) == ("MaskCLIP", "toy_world_sem_seg_train")
    assert res["images"] == 4 and res["vocabulary_size"] == 9
    assert res["score_kind"] == "probabilities"  # MaskCLIP declares its scores
    assert res["images_per_s"] == pytest.approx(4 / res["seconds"])
    assert "pseudo-labelling toy_world_sem_seg_train" in summary


def test_infer_times_whole_and_slide_inference(tmp_path):
    args = ["infer", "--config-file", "configs/toy/maskclip.yaml", "--modes", "whole", "slide"]
    args += ["--size", "48", "64", "--iters", "1", "--warmup", "0", "--device", "cpu"]
    res, summary = _run(args + ["--cache-dir", str(tmp_path / "cache")], None, tmp_path)
    assert (res["meta_architecture"], res["size"], res["batch"]) == ("MaskCLIP", [48, 64], 1)
    assert res["skipped_modes"] == {}
    for mode in ("whole", "slide"):
        figures = res[mode]
        assert figures["latency_s"] > 0 and figures["flops_per_image"] > 0, mode
        assert figures["images_per_s"] == pytest.approx(1 / figures["latency_s"])
        assert f"{mode} images/s" in summary
    # the 48x64 image is padded up to the slide window: the window costs more than the image
    assert res["slide_window"][0] > 64
    assert res["slide"]["flops_per_image"] > 10 * res["whole"]["flops_per_image"]


def test_teacher_times_the_dense_forward_against_the_plain_tower(tmp_path):
    args = ["teacher", "--model", "configs/clip/tiny_vit.json", "--pretrained", ""]
    args += ["--size", "64", "64", "--batch", "1", "--iters", "1", "--warmup", "0"]
    res, summary = _run(args + ["--cache-dir", str(tmp_path / "cache")], None, tmp_path)
    assert res["grid"] == [4, 4]  # 64 pixels / patch 16
    for key in ("dense_s", "dense_keys_s", "plain_forward_same_tokens_s", "encode_image_s"):
        assert res[key] > 0, key
    ratio = res["dense_s"] / res["plain_forward_same_tokens_s"]
    assert res["ratio_dense_vs_plain_same_tokens"] == pytest.approx(ratio)
    assert res["maskclip_label_images_per_s"] > 0 and res["vocabulary_size"] > 1
    assert "dense / forward on same tokens" in summary and "MaskCLIP labelling" in summary


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--output", "{tmp}"], "--output {tmp} is a folder; give a .json file name"),
        (["MODEL.LSEG.FOO", "1"], "MODEL.LSEG.FOO (set in the overrides) is not a config key"),
        (["DATASETS.TRAIN", "('toy_wrld',)"], "DATASETS.TRAIN names 'toy_wrld', which is not"),
        (["--output", "/proc/b.json"], "--output: cannot write /proc/b.json"),
    ],
)
def test_mistakes_exit_2_in_one_line_before_any_work(tmp_path, argv, says, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    config = ["--config-file", "configs/toy/lseg_toyrn_400_bs8.yaml", "--iters", "1"]
    if argv[0] == "--output" and argv[1] == str(tmp_path):  # one of them as the command
        proc = subprocess.run(
            [sys.executable, TOOL, "train", *config, *argv],
            cwd=ROOT, env=subprocess_env(tmp_path / "no_data"), capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        status, err = proc.returncode, proc.stderr
        assert "FutureWarning" not in err  # detectron2's import-time jit.script, hushed
    else:  # the others in this process (their checks end before any work)
        from ovseg_testing.demo import load_script

        from ovseg.utils.cli import run_reporting_errors

        tool = load_script(TOOL)
        status = run_reporting_errors("benchmark.py", lambda: tool.main(["train", *config, *argv]))
        err = capsys.readouterr().err
    assert status == 2, err[-3000:]
    assert f"benchmark.py: error: {says.format(tmp=tmp_path)}" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, says",
    [
        (["infer", "--size", "0", "0"], "argument --size: must be >= 1, got 0"),
        (["infer", "--size", "-5", "64"], "argument --size: must be >= 1, got -5"),
        (["train", "--threads", "-3"], "argument --threads: must be >= 0, got -3"),
        (["train", "--peak-tflops", "-1"], "argument --peak-tflops: must be > 0, got -1.0"),
    ],
)
def test_option_values_no_run_can_mean_are_refused(argv, says, capsys):
    from ovseg_testing.demo import load_script

    tool = load_script(TOOL)
    with pytest.raises(SystemExit) as info:
        tool.build_parser().parse_args([*argv, "--config-file", "configs/toy/maskclip.yaml"])
    assert info.value.code == 2 and says in capsys.readouterr().err
