"""tools/run_demo.py reuses a finished run only while its command and merged config match."""

import importlib.util
import json
import shutil
import subprocess

import pytest
from ovseg_testing import ROOT

CONFIG = "configs/toy/lseg_toyrn_400_bs8.yaml"


@pytest.fixture
def demo(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_demo", ROOT / "tools" / "run_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")  # a repository root to edit
    monkeypatch.setattr(mod, "ROOT", tmp_path)

    def no_training(*args, **kwargs):
        raise RuntimeError("train_net.py was started")

    monkeypatch.setattr(subprocess, "Popen", no_training)
    return mod


def _finish(demo, root, out, opts):
    """Write the record of a finished run, as train_student does after training."""
    command = " ".join(["train_net.py", "--config-file", CONFIG, *opts, "OUTPUT_DIR", str(out)])
    key = demo.run_key(command, root / CONFIG, [*opts, "OUTPUT_DIR", str(out)])
    out.mkdir(parents=True)
    (out / "demo_run.json").write_text(json.dumps({**key, "metrics": {"hIoU": 12.5}}))


def test_a_finished_run_is_reused_until_its_config_changes(demo, tmp_path):
    out, opts, config = tmp_path / "run", ["SOLVER.MAX_ITER", "7"], tmp_path / CONFIG
    _finish(demo, tmp_path, out, opts)
    metrics = demo.train_student(config, out, opts, env={})
    assert metrics == {"hIoU": 12.5, "_reused": True}
    with pytest.raises(RuntimeError, match="train_net.py was started"):
        demo.train_student(config, out, opts, env={}, reuse=False)
    with pytest.raises(RuntimeError, match="train_net.py was started"):
        demo.train_student(config, out, ["SOLVER.MAX_ITER", "8"], env={})  # another command
    config.write_text(config.read_text().replace("BASE_LR: 0.001", "BASE_LR: 0.002"))
    with pytest.raises(RuntimeError, match="train_net.py was started"):
        demo.train_student(config, out, opts, env={})  # same command, edited config file
