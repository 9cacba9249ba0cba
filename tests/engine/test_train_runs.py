"""ovseg.engine.train_runs (make demo's students): a finished run is reused only while its
command, merged config and CLIP weights match."""

import json
import shutil
import subprocess

import pytest
from ovseg_testing import ROOT

from ovseg.engine.train_runs import (
    RECORD,
    progress_line,
    read_final_metrics,
    run_key,
    run_training,
)

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
    key = run_key(command, root / CONFIG, [*opts, "OUTPUT_DIR", str(out)], root)
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
    (out / "last_checkpoint").write_text("model_final.pth")  # the earlier run's
    with pytest.raises(RuntimeError, match="train_net.py was started"):
        run_training(config, out, opts, root=root, env={})  # same command, edited config file
    # a run started over: train_net.py refuses to train over a last_checkpoint without --resume
    assert not (out / "last_checkpoint").exists()


def test_a_finished_run_is_not_reused_after_its_clip_file_changed(root):
    # make demo's RETRAIN_CLIP rewrites the CLIP file in place: the finished run was reused,
    # and its checkpoint then refused by the gallery's load (another teacher)
    (root / "clips").mkdir()
    clip = root / "clips" / "clip.pt"  # relative: read from the run's working directory
    clip.write_bytes(b"first pretraining")
    out, opts = root / "run", ["MODEL.CLIP.PRETRAINED", "clips/clip.pt"]
    _finish(root, out, opts)
    assert run_training(root / CONFIG, out, opts, root=root, env={})["_reused"]
    clip.write_bytes(b"second pretraining")
    with pytest.raises(RuntimeError, match="train_net.py was started"):
        run_training(root / CONFIG, out, opts, root=root, env={})


def test_final_metrics_keep_the_summaries_of_a_panoptic_test_set(tmp_path):
    early = {"iteration": 9, "sem_seg/mIoU": 1.0}
    final = {
        "iteration": 19, "sem_seg/mIoU": 40.0, "sem_seg/mIoU-unseen": 20.0,
        "panoptic_seg/PQ": 30.0, "panoptic_seg/PQ-unseen": 10.0, "panoptic_seg/PQ_th": 25.0,
        "segm/AP": 12.0, "segm/AP50-unseen": 8.0, "segm/AP-circle": 50.0,
        "segm/APs": 3.0, "lr": 0.1, "total_loss": 2.0,
    }  # fmt: skip
    lines = [json.dumps(r) for r in (early, {"iteration": 10, "total_loss": 3.0}, final)]
    (tmp_path / "metrics.json").write_text("\n".join(lines) + "\n")
    assert read_final_metrics(tmp_path) == {
        "mIoU": 40.0, "mIoU-unseen": 20.0, "PQ": 30.0, "PQ-unseen": 10.0, "PQ_th": 25.0,
        "AP": 12.0, "AP50-unseen": 8.0,
    }  # fmt: skip


def test_progress_lines_keep_the_iteration_and_loss_of_any_number_of_terms():
    many = "  ".join(f"loss_{i}: 0.5" for i in range(12))
    line = (
        "[11/30 08:39:21] d2.utils.events INFO:  eta: 0:03:55  iter: 379  total_loss: 8.751  "
        f"{many}  time: 0.1159  data_time: 0.0097  lr: 0.00085668  \n"
    )
    assert progress_line(line) == "iter 379  total_loss 8.751  eta 0:03:55  lr 0.00085668"
    result = "[11/30 08:43:37 d2.evaluation.testing]: copypaste: 46.5041,84.8583,52.7517\n"
    assert progress_line(result) == "copypaste: 46.5041,84.8583,52.7517"
    assert progress_line("[11/30 08:43:37 d2.engine]: Starting training from iteration 0") is None
