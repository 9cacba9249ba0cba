"""ovseg.export and tools/export_onnx.py: tiny random-weight LSeg and ZegCLIP exported with a
fixed vocabulary, run by onnxruntime and compared with the PyTorch test path; students that
cannot export say why. Skipped without the export extra unless OVSEG_REQUIRE_EXTRAS=1 (as
.ci/run sets)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ovseg_testing import (
    ROOT,
    load_script,
    subprocess_env,
    tiny_freeseg_cfg,
    tiny_lseg_cfg,
    tiny_xpm_cfg,
    tiny_zegclip_cfg,
)

from detectron2.modeling import build_model

from ovseg.export import compare_with_onnxruntime, export_blocker, export_onnx

_MISSING = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
if _MISSING:
    _REASON = f'the export extra is missing ({", ".join(_MISSING)}): pip install -e ".[export]"'
    if os.environ.get("OVSEG_REQUIRE_EXTRAS") == "1":
        raise RuntimeError(_REASON + " (OVSEG_REQUIRE_EXTRAS=1)")
    pytest.skip(_REASON, allow_module_level=True)

import onnx  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = ["cat", "dog", "grass", "sky"]


def _images(batch: int, size, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, 3, *size)).astype(np.float32)


def _export_and_compare(cfg, tmp_path, size, batch: int = 3) -> tuple[float, onnx.ModelProto]:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = tmp_path / "model.onnx"
    wrapper = export_onnx(model, NAMES, path, size=size)
    # the batch axis is dynamic: the export traced a batch of 2, the check runs 3
    diff = compare_with_onnxruntime(wrapper, path, _images(batch, size))
    return diff, onnx.load(str(path))


def test_lseg_exports_and_matches_pytorch(tmp_path):
    diff, proto = _export_and_compare(tiny_lseg_cfg(tmp_path / "cache"), tmp_path, (64, 64))
    assert diff < 1e-4, diff
    # the vocabulary is baked in: PyTorch with other names is far from the graph's scores
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model(tiny_lseg_cfg(tmp_path / "cache")).eval()
    image = _images(1, (64, 64))
    (ours,) = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"image": image})
    other = ["tree", "road", "car", "sky"]
    with torch.no_grad():
        theirs = model([{"image": torch.from_numpy(image[0]), "vocabulary": other}])[0]
    assert np.abs(ours[0] - theirs["sem_seg"].numpy()).max() > 1e-3
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["vocabulary"]) == NAMES
    assert meta["score_kind"] == "probabilities" and meta["meta_architecture"] == "LSeg"
    assert [i.name for i in proto.graph.input] == ["image"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    # the text embeddings are constants: no input but the image
    assert len(proto.graph.input) == 1


@pytest.mark.slow
def test_lseg_sliding_window_export_matches(tmp_path):
    cfg = tiny_lseg_cfg(tmp_path / "cache")
    cfg.TEST.INFERENCE_MODE = "slide"
    cfg.TEST.SLIDE_WINDOW = (32, 32)
    cfg.TEST.SLIDE_STRIDE = (24, 24)
    # two windows overlapping by 8 columns: the overlap is averaged in the graph too
    diff, _ = _export_and_compare(cfg, tmp_path, (32, 56))
    assert diff < 1e-4, diff


def test_zegclip_exports_and_matches_pytorch(tmp_path):
    diff, proto = _export_and_compare(tiny_zegclip_cfg(tmp_path / "cache"), tmp_path, (64, 64))
    assert diff < 1e-4, diff
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["meta_architecture"] == "ZegCLIP"


def test_synonyms_export_as_the_test_path_merges_them(tmp_path):
    cfg = tiny_lseg_cfg(tmp_path / "cache")
    names = ["cat, kitten", "dog", "grass, lawn, turf"]
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.synonym_merge == "max"
    path = tmp_path / "model.onnx"
    wrapper = export_onnx(model, names, path, size=(64, 64))
    assert compare_with_onnxruntime(wrapper, path, _images(2, (64, 64))) < 1e-4
    image = _images(1, (64, 64), seed=1)
    with torch.no_grad():
        exported = wrapper(torch.from_numpy(image))[0]
        test_path = model([{"image": torch.from_numpy(image[0]), "vocabulary": names}])[0]
    assert exported.shape[0] == 3
    torch.testing.assert_close(exported, test_path["sem_seg"], rtol=1e-5, atol=1e-6)


def test_students_that_cannot_export_say_why(tmp_path):
    freeseg = build_model(tiny_freeseg_cfg(tmp_path / "cache"))
    assert "data-dependent number of crops" in export_blocker(freeseg)
    with pytest.raises(ValueError, match="FreeSeg is not exported"):
        export_onnx(freeseg, NAMES, tmp_path / "f.onnx", size=(64, 64))
    assert "not an ovseg open-vocabulary student" in export_blocker(torch.nn.Conv2d(3, 3, 1))
    for arch in ("XPMTeacher", "XPMStudent"):
        xpm = build_model(tiny_xpm_cfg(tmp_path / "cache", arch))
        assert f"{arch} is not exported: its test path is a detector's" in export_blocker(xpm)
    cfg = tiny_lseg_cfg(tmp_path / "cache")
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.FLIP = True
    assert "TEST.AUG" in export_blocker(build_model(cfg))
    assert not (tmp_path / "f.onnx").exists()


@pytest.mark.slow
def test_export_tool_on_the_toy_maskclip(tmp_path, capsys):
    """The command as docs/export.md gives it, on the shipped toy MaskCLIP; a refusal exits 2."""
    out = tmp_path / "maskclip.onnx"
    cmd = [sys.executable, "tools/export_onnx.py", "--config-file", "toy/maskclip.yaml",
           "--vocabulary", "background, circle, square", "--output", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max abs difference" in proc.stdout and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["maskclip.onnx"]  # no unchecked graph left
    diff = float(proc.stdout.rsplit("max abs difference", 1)[1].split()[0])
    assert diff < 1e-4
    # a refusal, in-process (the same main the command runs): exit 2 with the reason
    tool = load_script("tools/export_onnx.py")
    argv = ["--config-file", "toy/freeseg_toyrn_alltask_2400_bs8.yaml", "--vocabulary", "a, b",
            "--output", str(tmp_path / "f.onnx")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    assert exit_info.value.code == 2
    assert "FreeSeg is not exported" in capsys.readouterr().err
    assert not (tmp_path / "f.onnx").exists()


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--weights", "run/model_fnal.pth"], "Checkpoint run/model_fnal.pth (MODEL.WEIGHTS"),
        (["--image", "no_such.png"], "--image no_such.png is not a file"),
        (["--image", str(ROOT / "LICENSE")], "--image: Cannot decode image file"),
        (["--output-is-the-folder"], "is a folder; give a .onnx file name"),
        (["--output", "/proc/ovseg.onnx"], "cannot write /proc/ovseg.onnx"),
        (["--atol", "-1"], "--atol -1.0: give the largest accepted difference (>= 0)"),
        (["--opset", "11"], "--opset 11: the exporter writes opset 18 or later"),
    ],
)
def test_export_tool_mistakes_exit_2_and_leave_no_file(tmp_path, capsys, extra, says):
    tool = load_script("tools/export_onnx.py")
    out = tmp_path / "m.onnx"
    if extra == ["--output-is-the-folder"]:
        extra = ["--output", str(tmp_path)]
    argv = ["--config-file", "toy/lseg_toyrn_400_bs8.yaml", "--vocabulary", "a, b",
            "--output", str(out), *extra]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_check_writes_nothing_to_the_output(tmp_path, capsys, monkeypatch):
    """A graph that fails the comparison never reaches --output (an older file there stays);
    it is kept beside it, named as unverified, and the command exits 1."""
    tool = load_script("tools/export_onnx.py")
    monkeypatch.setattr(tool, "compare_with_onnxruntime", lambda wrapper, path, images: 0.5)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the graph of an earlier, checked export")
    argv = ["--config-file", "toy/lseg_toyrn_400_bs8.yaml", "--vocabulary", "a, b",
            "--output", str(out)]  # fmt: skip
    assert tool.main(argv) == 1
    err = capsys.readouterr().err
    kept = tmp_path / "m.unverified.onnx"
    assert f"FAILED: 0.5 exceeds --atol 0.0001; nothing was written to {out}" in err, err
    assert str(kept) in err and kept.stat().st_size > 1000
    assert out.read_bytes() == b"the graph of an earlier, checked export"


def test_an_opset_below_the_exporters_is_refused_before_exporting(tmp_path):
    """Asked for opset 11 the exporter used to print a converter traceback and write an
    opset-18 file labelled 11; refused now, and nothing written."""
    from ovseg.export import export_onnx

    with pytest.raises(ValueError, match="opset 11 is below 18"):
        export_onnx(torch.nn.Identity(), ["a"], str(tmp_path / "x.onnx"), size=(8, 8), opset=11)
    assert list(tmp_path.iterdir()) == []
