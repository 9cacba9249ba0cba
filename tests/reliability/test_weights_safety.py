"""Weight files never run code: crafted .pkl and .pth files are refused before they can act,
real detectron2 model-zoo .pkl files (numpy arrays) still load, and the demo's
--retrain-clip never executes a command read from a checkpoint."""

from __future__ import annotations

import pickle
import re
import sys

import numpy as np
import pytest
import torch
from ovseg_testing import ROOT

from ovseg.engine import AtomicCheckpointer
from ovseg.engine.checkpoint import load_model_weights
from ovseg.utils.safe_load import UnsafeWeightsError, load_pickle_weights


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: the file appears iff the pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_crafted_pkl_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pkl"
    payload = {"model": {"0.weight": _CreatesFile(marker)}, "__author__": "x"}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(
        UnsafeWeightsError, match=r"weights\.pkl names \w+\.open, which is not plain data"
    ):
        AtomicCheckpointer(_model()).load(str(path))
    assert not marker.exists()


def test_crafted_pth_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"0.weight": torch.zeros(2, 3)}, "x": _CreatesFile(marker)}, path)
    with pytest.raises(UnsafeWeightsError, match=r"model_final\.pth holds objects beyond"):
        load_model_weights(_model(), str(path))
    assert not marker.exists()


def _model_zoo_pkl(model, path, *, numpy_core: str = "") -> None:
    """A detectron2 model-zoo file: {"model": {name: ndarray}, "__author__": ...}."""
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    data = pickle.dumps({"model": state, "__author__": "Detectron2 Model Zoo"}, protocol=2)
    if numpy_core:  # files written under numpy 1 name numpy.core, numpy 2 numpy._core
        data = re.sub(rb"numpy\._?core\.multiarray", numpy_core.encode(), data)
    path.write_bytes(data)


@pytest.mark.parametrize("numpy_core", ["", "numpy.core.multiarray", "numpy._core.multiarray"])
def test_real_model_zoo_pkl_still_loads(tmp_path, numpy_core):
    source, target = _model(), torch.nn.Sequential(torch.nn.Linear(3, 2))
    path = tmp_path / "model_zoo.pkl"
    _model_zoo_pkl(source, path, numpy_core=numpy_core)
    assert set(load_pickle_weights(path)["model"]) == {"0.weight", "0.bias"}
    load_model_weights(target, str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_caffe2_style_pkl_of_numpy_blobs_loads(tmp_path):
    source = _model()
    blobs = {k: v.numpy().astype(np.float32) for k, v in source.state_dict().items()}
    path = tmp_path / "caffe2.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    data = AtomicCheckpointer(source)._load_file(str(path))
    assert data["__author__"] == "Caffe2" and set(data["model"]) == set(blobs)


def _run_demo(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    sys.modules.pop("run_demo", None)
    import run_demo

    return run_demo


def test_retrain_clip_never_runs_a_recorded_command(tmp_path, monkeypatch):
    run_demo = _run_demo(monkeypatch)
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "clip.pt"
    command = f"touch {marker}"
    torch.save({"state_dict": {}, "ovseg_pretrain": {"command": command}}, checkpoint)
    with pytest.raises(SystemExit, match="not tools/pretrain_toy_clip.py"):
        run_demo.retrain_clip(str(checkpoint))
    assert not marker.exists()

    # a pickle that acts when loaded is refused before anything reads the command
    torch.save({"state_dict": {}, "ovseg_pretrain": _CreatesFile(marker)}, checkpoint)
    with pytest.raises(UnsafeWeightsError):
        run_demo.retrain_clip(str(checkpoint))
    assert not marker.exists()


def test_retrain_clip_runs_the_tool_with_the_recorded_options(tmp_path, monkeypatch):
    run_demo = _run_demo(monkeypatch)
    checkpoint = tmp_path / "clip.pt"
    options = ["--model-config", "configs/clip/toy_rn.json", "--output", "c.pt", "--steps", "3"]
    command = "python tools/pretrain_toy_clip.py " + " ".join(options)
    torch.save({"state_dict": {}, "ovseg_pretrain": {"command": command}}, checkpoint)
    calls = []

    class Tool:
        @staticmethod
        def main(argv):
            calls.append(list(argv))

    monkeypatch.setattr(run_demo, "_load_tool", lambda path: Tool)
    run_demo.retrain_clip(str(checkpoint))
    # with --resume: an interrupted retraining continues, a finished one exports again
    assert calls == [options + ["--resume"]]


def test_no_unsafe_torch_load_in_the_package_tools_or_demo():
    sources = [ROOT / "train_net.py"]
    for folder in ("ovseg", "tools", "demo"):
        sources += sorted((ROOT / folder).rglob("*.py"))
    offenders = []
    for path in sources:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "weights_only=False" in line or re.search(r"\bpickle\.loads?\(", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
