"""make demo QUICK=1: the offline world end to end writes well-formed results."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest
from ovseg_testing import ROOT, subprocess_env

pytestmark = pytest.mark.slow

RUN_KEYS = ("mIoU-seen", "mIoU-unseen", "hIoU", "seconds")
MASK_KEYS = ("AP-seen", "AP-unseen", "AP50-unseen", "PQ-seen", "PQ-unseen")


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
    students = {"lseg", "zegclip", "zegclip_transductive", "maskclip_plus", "freeseg", "xpm"}
    assert students <= set(res["students"])
    for key, runs in res["students"].items():
        if key == "xpm":  # instance masks: its own keys
            continue
        for variant in ("teacher", "random_teacher"):
            for key in RUN_KEYS:
                value = runs[variant][key]
                assert isinstance(value, float) and not math.isnan(value), (variant, key)
    # FreeSeg trained on the panoptic data and was scored on all three tasks
    for variant in ("teacher", "random_teacher"):
        run = res["students"]["freeseg"][variant]
        for key in MASK_KEYS:
            assert isinstance(run[key], float) and 0 <= run[key] <= 100, (variant, key)
        log = (out / "split_a" / "freeseg" / variant / "log.txt").read_text()
        assert "toy_world_panoptic_train" in log and "Task: panoptic_seg" in log, variant
    # ZegCLIP's transductive stage started from the inductive run's halfway checkpoint
    for variant in ("teacher", "random_teacher"):
        log = (out / "split_a" / "zegclip_transductive" / variant / "log.txt").read_text()
        assert f"zegclip/{variant}/model_0000005.pth" in log, variant
    assert (out / "gallery.png").stat().st_size > 10_000
    table = (out / "results.md").read_text()
    assert "| lseg | toy CLIP |" in table
    assert "| AP-seen | AP-unseen | AP50-unseen | PQ-seen | PQ-unseen |" in table
    # XPM: teacher -> caption pseudo instances -> student, with both CLIPs; the teachers are
    # the students without pseudo-labels
    xpm = res["students"]["xpm"]
    for variant in ("teacher", "random_teacher", "no_pseudo", "no_pseudo_random_teacher"):
        for key in ("AP-seen", "AP-unseen", "AP50-unseen"):
            assert 0 <= xpm[variant][key] <= 100, (variant, key)
    store = out / "split_a" / "xpm" / "teacher" / "pseudo_instances" / "manifest.json"
    assert json.loads(store.read_text())["count"] == 120  # every training image labelled
    assert "| student, caption pseudo-labels | toy CLIP |" in table


def _run_demo_module():
    spec = importlib.util.spec_from_file_location("run_demo", ROOT / "tools" / "run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_second_stage_starts_from_the_checkpoint_its_config_names(tmp_path):
    start = _run_demo_module().start_checkpoint
    toy = ROOT / "configs" / "toy"
    child = toy / "zegclip_toyvit_transductive_600+600_bs16.yaml"
    parent = toy / "zegclip_toyvit_inductive_1200_bs16.yaml"
    # the paper's chain: the inductive run's halfway checkpoint (600 of 1200 iterations)
    assert start(child, parent, None) == "model_0000599.pth"
    # a quick run (12 iterations a stage) saves and starts from its own halfway checkpoint
    assert start(child, parent, 12) == "model_0000005.pth"
    # a checkpoint the quick run does not save is refused, naming it
    other = tmp_path / "child.yaml"
    other.write_text(f"_BASE_: {child}\nMODEL:\n  WEIGHTS: out/model_0000299.pth\n")
    with pytest.raises(ValueError, match="model_0000299.pth is not the halfway point"):
        start(other, parent, 12)
    final = tmp_path / "final.yaml"
    final.write_text(f"_BASE_: {child}\nMODEL:\n  WEIGHTS: out/model_final.pth\n")
    assert start(final, parent, 12) == "model_final.pth"


def test_students_are_selected_by_name_with_their_first_stage():
    select = _run_demo_module().select_students
    assert select(None) == [
        "lseg", "zegclip", "zegclip_transductive", "maskclip_plus", "freeseg", "xpm"
    ]  # fmt: skip
    assert select(["zegclip,lseg"]) == ["lseg", "zegclip"]  # table order, commas or spaces
    assert select(["maskclip_plus", "lseg"]) == ["lseg", "maskclip_plus"]
    # a second stage brings the run it starts from
    assert select(["zegclip_transductive"]) == ["zegclip", "zegclip_transductive"]
    with pytest.raises(ValueError, match="unknown student.* nope; valid students: lseg, "):
        select(["lseg,nope"])


def test_an_output_that_cannot_be_a_folder_ends_in_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit, match="run_demo.py: error: --output: cannot create output"):
        _run_demo_module().main(["--output", str(tmp_path / "a_file" / "demo")])


def test_a_costly_student_declares_a_cheaper_schedule_or_stays_out_of_the_default():
    module = _run_demo_module()
    cheap = module.Student("costly", "x_*.yaml", demo_opts=("SOLVER.MAX_ITER", "300"))
    extra = module.Student("optional", "y_*.yaml", in_default=False)
    students = module.STUDENTS + (cheap, extra)
    assert "optional" not in module.select_students(None, students)
    assert module.select_students(["optional"], students) == ["optional"]
    assert cheap.demo_opts == ("SOLVER.MAX_ITER", "300")


def test_make_demo_passes_students_and_refuses_unknown_names(tmp_path):
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo", "STUDENTS=lseg,zegclip"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "--methods lseg,zegclip" in dry.stdout, dry.stdout + dry.stderr
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "run_demo.py"), "--methods", "lseg,nope",
         "--output", str(tmp_path)],
        env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown student(s) nope; valid students: lseg, zegclip" in proc.stderr
