"""tools/generate_pseudo_labels.py end to end: MaskCLIP (tiny random CLIP) on a fixture ADE20K;
its arguments (ovseg.engine.pseudo_labelling)."""

import json
import pickle

import numpy as np
import pytest
import torch
from ovseg_testing import run_script
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.env import seed_all_rng

from ovseg.data import build_dataset_mapper
from ovseg.engine.defaults import load_config
from ovseg.engine.pseudo_labelling import build_labeller, parse_args
from ovseg.pseudo import (
    PseudoLabelStore,
    build_manifest,
    generate_pseudo_labels,
    labeller_fingerprint,
    labeller_settings,
)
from ovseg.vocab import Vocabulary

TOOL = "tools/generate_pseudo_labels.py"
CONFIG = "configs/ade20k/maskclip/maskclip_vitb16_bs1.yaml"


def _tiny_maskclip(tmp_path) -> list:
    """Overrides shrinking CONFIG to the tiny random CLIP on 48-pixel inputs, on the CPU."""
    return [
        "MODEL.CLIP.MODEL_NAME", "configs/clip/tiny_vit.json",
        "MODEL.CLIP.PRETRAINED", "",
        "MODEL.CLIP.TEMPLATES", "single",
        "MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache"),
        "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TEST", "48",
        "INPUT.MAX_SIZE_TEST", "1000",
    ]  # fmt: skip


def test_arguments_take_opts_with_or_without_the_flag():
    a = parse_args(["--config-file", "c.yaml", "--output", "o", "--opts", "A", "1"])
    b = parse_args(["--config-file", "c.yaml", "--output", "o", "A", "1"])
    # the run's log and config.yaml go beside the store, not into ./output or the config's
    # OUTPUT_DIR (a teacher run's folder), unless OUTPUT_DIR is given
    assert a.opts == b.opts == ["A", "1", "OUTPUT_DIR", "o_generation"]
    assert a.threshold == 0.0 and a.scores == "auto" and a.dataset == ""
    assert b.command == "python tools/generate_pseudo_labels.py --config-file c.yaml --output o A 1"
    c = parse_args(["--config-file", "c.yaml", "--output", "o/", "OUTPUT_DIR", "logs"])
    assert c.opts == ["OUTPUT_DIR", "logs"]
    assert parse_args(["--config-file", "c.yaml", "--output", "s/o/"]).opts[-1] == "s/o_generation"


@pytest.mark.slow
@pytest.mark.skipif("MaskCLIP" not in META_ARCH_REGISTRY, reason="MaskCLIP is not registered")
def test_cli_labels_the_fixture_and_a_rerun_is_a_resume(ade20k_registered, tmp_path):
    out = tmp_path / "store"
    opts = [*_tiny_maskclip(tmp_path), "OUTPUT_DIR", str(tmp_path / "log")]
    args = ["--config-file", CONFIG, "--output", str(out), "--threshold", "0.01"]
    args += ["--scores", "probabilities", "--no-progress", *opts]
    run_script(TOOL, *args, datasets=ade20k_registered)

    # two processes (gloo): one store, each image labelled once, the very same files
    two = tmp_path / "store2"
    args2 = [str(two) if a == str(out) else a for a in args] + ["OUTPUT_DIR", str(tmp_path / "l2")]
    run_script(TOOL, "--num-gpus", "2", *args2, datasets=ade20k_registered)
    assert (tmp_path / "l2/log.txt.rank1").exists()  # a second process did run
    files = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert len(files) == 8 and files == sorted(p.relative_to(two) for p in two.rglob("*.png"))
    for f in files:
        assert (out / f).read_bytes() == (two / f).read_bytes(), f
    two_manifest = json.loads((two / "manifest.json").read_text())
    assert two_manifest["count"] == 4
    assert PseudoLabelStore.open(two).image_ids() == PseudoLabelStore.open(out).image_ids()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 4 and manifest["dataset"] == "ade20k_sem_seg_train"
    assert manifest["vocabulary"] == list(Vocabulary.builtin("ade150").names)
    assert manifest["threshold"] == 0.01 and manifest["label_dtype"] == "uint8"
    assert manifest["teacher"]["settings"]["meta_architecture"] == "MaskCLIP"
    assert manifest["teacher"]["settings"]["scores"] == "probabilities"
    assert len(manifest["teacher"]["clip"]) == 64

    # the same labeller built here has the same fingerprint, so a re-run resumes the store
    cfg = load_config(CONFIG, opts)
    seed_all_rng(0)  # what the tool does: the same random teacher in every process
    model = build_model(cfg).eval()
    settings = {**labeller_settings(cfg), "scores": "probabilities"}
    fingerprint, teacher = labeller_fingerprint(model, settings)
    assert fingerprint == manifest["fingerprint"]
    store = PseudoLabelStore.open(out, expect={"fingerprint": fingerprint})
    dicts = DatasetCatalog.get("ade20k_sem_seg_train")
    mapper = build_dataset_mapper(cfg, False, "ade20k_sem_seg_train")
    stats = generate_pseudo_labels(
        model, dicts, mapper, store, threshold=0.01, progress=False, score_kind="probabilities"
    )
    assert stats == {"total": 4, "written": 0, "skipped": 4}

    # labels at the original 64x64 size, equal to MaskCLIP's own argmax on the mapped input
    inputs = mapper(dict(dicts[1]))
    assert tuple(inputs["image"].shape[-2:]) == (48, 48)  # the teacher saw a resized image
    with torch.no_grad():
        scores = model([inputs])[0]["sem_seg"]
    expected = scores.argmax(0).numpy()
    expected[scores.max(0).values.clamp(0, 1).numpy() < 0.01] = 255
    label, conf = store.read(dicts[1]["image_id"])
    assert label.shape == conf.shape == (64, 64)
    np.testing.assert_array_equal(label, expected)
    with Image.open(out / "confidence" / f"{dicts[1]['image_id']}.png") as im:
        assert im.size == (64, 64) and im.mode == "L"

    # another threshold is another store: refused, naming the field
    other = build_manifest(
        fingerprint=fingerprint,
        teacher=teacher,
        vocabulary=manifest["vocabulary"],
        threshold=0.5,
        dataset="ade20k_sem_seg_train",
    )
    with pytest.raises(ValueError, match="manifest.threshold: existing 0.01, now 0.5"):
        PseudoLabelStore.create(str(out), other)


@pytest.mark.skipif("MaskCLIP" not in META_ARCH_REGISTRY, reason="MaskCLIP is not registered")
def test_a_student_config_relabelled_maskclip_labels_as_maskclip(ade20k_registered, tmp_path):
    # the ovseg-variant MaskCLIP+ config's generation command: MODEL.META_ARCHITECTURE
    # MaskCLIP over a config whose MODEL.WEIGHTS is the student's ImageNet backbone (.pkl)
    zoo = tmp_path / "R-103.pkl"
    weights = {"stem.conv1.weight": np.ones((128, 3, 3, 3), np.float32)}
    data = {"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    zoo.write_bytes(pickle.dumps(data, protocol=2))
    opts = _tiny_maskclip(tmp_path)
    plain = build_labeller(load_config(CONFIG, opts))
    relabelled = build_labeller(load_config(CONFIG, [*opts, "MODEL.WEIGHTS", str(zoo)]))
    inputs = plain.mapper(dict(plain.dataset_dicts[0]))
    with torch.no_grad():
        want = plain.model([inputs])[0]["sem_seg"]
        torch.testing.assert_close(relabelled.model([inputs])[0]["sem_seg"], want)
    assert relabelled.score_kind == plain.score_kind


def test_user_mistakes_end_in_one_error_line_and_write_nothing(tmp_path, capsys):
    """A misspelt --dataset, a file as --output and an option after the overrides each stop
    with ``generate_pseudo_labels.py: error: ...`` (exit 2), before any output is written."""
    import subprocess
    import sys

    from ovseg_testing import ROOT, registered_toy_world, run_main, subprocess_env

    (tmp_path / "a_file").write_text("")
    toy = ["--config-file", str(ROOT / "configs/toy/maskclip.yaml"), "--no-progress"]
    log = ["OUTPUT_DIR", str(tmp_path / "log"), "MODEL.CLIP.CACHE_DIR", str(tmp_path / "c")]
    cases = [
        # two processes: the name is checked before either starts
        (
            [
                "--dataset",
                "toy_world_sem_seg_vall",
                "--num-gpus",
                "2",
                "--output",
                str(tmp_path / "s"),
            ],
            [],
        ),
        (["--dataset", "toy_world_sem_seg_val", "--output", str(tmp_path / "a_file")], []),
        (["--dataset", "toy_world_sem_seg_val", "--output", str(tmp_path / "s")], ["--threshold"]),
        # before the teacher is built or <output>_generation written
        (
            [
                "--dataset",
                "toy_world_sem_seg_val",
                "--threshold",
                "-1",
                "--output",
                str(tmp_path / "s"),
            ],
            [],
        ),  # fmt: skip
        (["--dataset", "toy_world_sem_seg_val", "--output", str(tmp_path / "a_file" / "s")], []),
    ]
    says = [
        "'toy_world_sem_seg_vall' is not a registered dataset; the closest registered names "
        "are ['toy_world_sem_seg_val'",
        "a_file is a file; give a folder name",
        "--threshold comes after the config overrides",
        "--threshold -1.0 is not in [0, 1]",
        "--output: cannot write",
    ]
    with registered_toy_world(tmp_path / "data", num_train=1, num_val=1):
        for i, ((argv, tail), message) in enumerate(zip(cases, says)):
            argv = [*toy, *argv, *log, *tail, *(["0.5"] if tail else [])]
            if i == 0:  # as the command (the subprocess registers the toy world itself)
                proc = subprocess.run(
                    [sys.executable, TOOL, *argv], cwd=ROOT, env=subprocess_env(tmp_path / "data"),
                    capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                status, err = proc.returncode, proc.stderr
            else:  # main(argv) in this process: the checks end before any work
                status, err = run_main(TOOL, argv), capsys.readouterr().err
            assert status == 2, err[-2000:]
            assert "generate_pseudo_labels.py: error: " in err and message in err
            assert "Traceback" not in err
            assert not (tmp_path / "s").exists()
            assert i > 0 or not (tmp_path / "log").exists()  # stopped before setup wrote its log


def test_argument_errors_are_named_as_every_other_error(capsys):
    """argparse's errors began 'tools/generate_pseudo_labels.py: error:', the tool's own
    'generate_pseudo_labels.py: error:' (tools/README.md: '<tool>.py: error: ...')."""
    with pytest.raises(SystemExit):
        parse_args(["--config-file", "c.yaml", "--output", "o", "--threshold", "x"])
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("generate_pseudo_labels.py: error: argument"), err
