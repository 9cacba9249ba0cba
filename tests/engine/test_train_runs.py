"""ovseg.engine.train_runs (make demo's students): a finished run is reused only while its
command and merged config match."""

import json
import shutil
import subprocess

import pytest
from ovseg_testing import ROOT

from ovseg.engine.train_runs import RECORD, run_key, run_training

CONFIG = "configs/toy/lseg_toyrn_400_bs8.yaml"


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A repository root to edit, where starting train_net.py is an error."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")

    def no_training(*args, **kwargs):
        raise RuntimeError("train_net.py was started")

    monkeypatch.setattr(subprocess, "Popen", no_training)
    return tmp_path


def _finish(root, out, opts):
    """Write the record of a finished run, as run_training does after training."""
    command = " ".join(["train_net.py", "--config-file", CONFIG, *opts, "OUTPUT_DIR", str(out)])
    key = run_key(command, root / CONFIG, [*opts, "OUTPUT_DIR", str(out)])
    out.mkdir(parents=True)
    (out / RECORD).write_text(json.dumps({**key, "metrics": {"hIoU": 12.5}}))


def test_a_finished_run_is_reused_until_its_config_changes(root):
    out, opts, config = root / "run", ["SOLVER.MAX_ITER", "7"], root / CONFIG
    _finish(root, out, opts)
    metrics = run_training(config, out, opts, root=root, env={})
    assert metrics == {"hIoU": 12.5, "_reused": True}
    with pytest.raises(RuntimeError, match="train_net.py was started"):
        run_training(config, out, opts, root=root, env={}, reuse=False)
    with pytest.raises(RuntimeError, match="train_net.py was started"):
        run_training(config, out, ["SOLVER.MAX_ITER", "8"], root=root, env={})  # another command
    edited = config.read_text().replace("IMS_PER_BATCH: 8", "IMS_PER_BATCH: 9")
    assert edited != config.read_text(), f"{CONFIG} no longer sets IMS_PER_BATCH: 8"
    config.write_text(edited)
    with pytest.raises(RuntimeError, match="train_net.py was started"):
        run_training(config, out, opts, root=root, env={})  # same command, edited config file
