"""tools/convert_checkpoint.py (ovseg.convert.command): an official ZegCLIP checkpoint file
(official names and shapes, random weights, the tiny CLIP's) becomes an ovseg checkpoint that
detectron2's checkpointer loads into the paper config's model, which then computes what the
official model does; a file ovseg cannot convert fails naming the key."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from convert_utils import TINY_VIT, ZEGCLIP_CONFIG, build, clip_json, save_official, tiny_opts
from official_zegclip import official_zegclip_like
from ovseg_testing import ROOT, flip_tensor_byte, subprocess_env

from detectron2.checkpoint import DetectionCheckpointer

from ovseg.convert.command import main
from ovseg.engine.checkpoint import AtomicCheckpointer
from ovseg.engine.checkpoint_files import CheckpointCorruptedError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["INPUT.SIZE_DIVISIBILITY", "64"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Official checkpoint file, the CLIP weights file both sides use, opts, model."""
    tmp = tmp_path_factory.mktemp("convert")
    cfg, model = build(ZEGCLIP_CONFIG, tiny_opts(TINY_VIT, tmp / "cache") + SMALL)
    clip = tmp / "tiny_clip.pt"
    torch.save(model.teacher.model.state_dict(), clip)
    off = official_zegclip_like(model, clip_json(TINY_VIT), input_resolution=64, seed=5)
    opts = tiny_opts(TINY_VIT, tmp / "cache") + ["MODEL.CLIP.PRETRAINED", str(clip)] + SMALL
    return tmp, save_official(tmp / "official.pth", off.state_dict()), opts, model, off


def _run(*args):
    return subprocess.run(
        [sys.executable, "tools/convert_checkpoint.py", "--method", "zegclip", *map(str, args)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_converted_file_loads_and_computes_what_the_official_model_does(setup):
    tmp, official, opts, model, off = setup
    out, report = tmp / "ovseg.pth", tmp / "report.json"
    proc = _run("--input", official, "--output", out, "--report", report,
                "--config-file", ZEGCLIP_CONFIG, *opts)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "148 official tensors: 44 used (40 renamed), 104 dropped, 0 added" in proc.stdout
    assert "73 of 73 dropped CLIP tensors equal MODEL.CLIP's" in proc.stdout
    assert f"wrote 43 tensors to {out}" in proc.stdout
    data = torch.load(out, weights_only=True)
    assert set(data["model"]) == set(model.state_dict())
    accounts = json.loads(report.read_text())
    assert set(accounts["used"]) | set(accounts["dropped"]) == set(off.state_dict())
    assert data["conversion"]["used"] == accounts["used"]
    DetectionCheckpointer(model).load(str(out))  # as train_net.py --eval-only loads it
    x = torch.randn(1, 3, 64, 64)
    text = torch.nn.functional.normalize(torch.randn(20, 32), dim=-1)
    seen = torch.tensor([i in off.decode_head.seen_idx for i in range(20)])
    with torch.no_grad():
        expected = off.encode_decode(x, text)
        torch.testing.assert_close(model.predict(x, text, seen), expected, rtol=0, atol=1e-5)
    # the file records its contents, as a run's checkpoint does: a changed byte is refused
    biggest = max(data["model"].values(), key=lambda t: t.numel())
    damaged = flip_tensor_byte(out, biggest, tmp / "damaged.pth")
    with pytest.raises(CheckpointCorruptedError, match="'model'"):
        AtomicCheckpointer(model).load(str(damaged), checkpointables=[])


def test_without_a_config_names_alone(setup, capsys):
    tmp, official, _, _, _ = setup
    assert main(["--method", "zegclip", "--input", str(official),
                 "--output", str(tmp / "names_only.pth")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "not checked against a model (give --config-file)" in out
    assert "73 dropped CLIP tensors not compared" in out


def test_unconvertible_file_fails_naming_the_key(setup, capsys):
    tmp, official, _, _, _ = setup
    state = torch.load(official, weights_only=True)["state_dict"]
    state["decode_head.conv_seg.weight"] = torch.zeros(15, 32, 1, 1)
    bad = save_official(tmp / "bad.pth", state)
    args = ["--method", "zegclip", "--input", str(bad), "--output", str(tmp / "bad_out.pth")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert_checkpoint.py: error: ZegCLIP: 1 of 149 official tensors")
    assert "decode_head.conv_seg.weight (15, 32, 1, 1): unexpected" in err
    assert not (tmp / "bad_out.pth").exists()
    args = ["--method", "zegclip", "--input", str(tmp / "nothing.pth"), "--output", "x.pth"]
    assert main(args) == 2 and "does not exist" in capsys.readouterr().err
    args[3] = str(official)
    assert main([*args, "MODEL.DEVICE", "cpu"]) == 2
    assert "need --config-file" in capsys.readouterr().err


class _Opaque:
    """An object a weights-only load refuses to rebuild."""


def test_a_folder_or_a_non_checkpoint_as_input_is_named(tmp_path, capsys):
    args = ["--method", "lseg", "--output", str(tmp_path / "out.pth"), "--input"]
    assert main([*args, str(tmp_path)]) == 2
    assert f"'{tmp_path}' is a folder; give the checkpoint file in it" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("MODEL:\n  WEIGHTS: x\n")
    assert main([*args, str(tmp_path / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert "config.yaml is not a PyTorch checkpoint (neither the zip archive" in err, err
    # a real checkpoint holding an object no weights-only load rebuilds: torch's reason alone
    torch.save({"state_dict": _Opaque()}, tmp_path / "pickled.pth")
    assert main([*args, str(tmp_path / "pickled.pth")]) == 2
    err = capsys.readouterr().err
    assert "pickled.pth cannot be read with torch.load(weights_only=True)" in err
    assert "is it a PyTorch checkpoint?" in err and "In PyTorch 2.6" not in err
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize(
    "output, report, says",
    [
        ("{tmp}/folder_out", "", "--output {tmp}/folder_out is a folder; give a .pth file"),
        ("{tmp}/ok.pth", "{tmp}/folder_out", "--report {tmp}/folder_out is a folder"),
        ("{tmp}/ok.pth", "/proc/report.json", "--report: cannot write /proc/report.json"),
        ("/proc/out.pth", "", "--output: cannot write /proc/out.pth"),
    ],
)
def test_outputs_that_cannot_be_written_stop_it_before_converting(
    setup, tmp_path, capsys, output, report, says
):
    """Checked before the conversion: a bad --report used to be found after the checkpoint
    was written, so a failed command left a new file behind."""
    _, official, _, _, _ = setup
    (tmp_path / "folder_out").mkdir()
    args = ["--method", "zegclip", "--input", str(official), "--output"]
    args += [output.format(tmp=tmp_path)]
    if report:
        args += ["--report", report.format(tmp=tmp_path)]
    assert main(args) == 2
    assert says.format(tmp=tmp_path) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder_out"]  # nothing written
