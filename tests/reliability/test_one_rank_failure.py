"""A 2-process run (CPU, gloo) in which one process fails ends promptly with that process's
error: it never leaves the other waiting in a collective until the 30 min gloo timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from ovseg_testing import CONFIGS, ROOT, cpu_opts, subprocess_env, write_ade20k_fixture

from detectron2.engine import SimpleTrainer
from detectron2.utils.events import EventStorage

from ovseg.engine import train_loop

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills the process group"),
]

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"


def test_an_image_only_rank_1_reads_in_an_evaluation_ends_the_run(tmp_path):
    # 3 validation images: rank 0 scores the first two, rank 1 the third, which is corrupt.
    # Rank 1 raises while rank 0 waits in the evaluator's barrier; the run must end with rank
    # 1's error. It used to hang: rank 1's after_train wrote the losses pending under
    # SOLVER.METRICS_PERIOD with a gather, a collective rank 0 never enters.
    root = write_ade20k_fixture(tmp_path / "datasets", n_train=4, n_val=3)
    val = sorted((root / "ADEChallengeData2016/images/validation").glob("*.jpg"))
    val[-1].write_bytes(b"not an image")
    out = tmp_path / "out"
    opts = cpu_opts("SemanticSegmentor", tmp_path / "cache")
    opts += ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "2"]
    opts += ["SOLVER.METRICS_PERIOD", "20", "OUTPUT_DIR", str(out)]
    cmd = [sys.executable, "train_net.py", "--config-file", str(CONFIG), "--num-gpus", "2"]
    proc = subprocess.Popen(
        [*cmd, *opts],
        cwd=ROOT,
        env=subprocess_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"the run hung after rank 1 failed (killed after 120 s):\n{log[-3000:]}")
    # rank 1's own error, in one line: the launcher raises it as itself (it used to end in
    # torch's "Process 1 terminated with the following error" and rank 1's traceback)
    assert proc.returncode == 2, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("train_net.py: error: Cannot decode image file"), log[-3000:]
    assert val[-1].name in last and "'ade20k_sem_seg_val'" in last, last
    assert "Traceback" not in log, log[-3000:]


def test_losses_pending_at_an_early_stop_are_written_without_a_collective(monkeypatch):
    # what the main process of a multi-process run does when it stops early: its own pending
    # losses reach the storage, and nothing gathers (the other processes may never join)
    def gather(*args, **kwargs):
        raise AssertionError("a collective at an early stop")

    monkeypatch.setattr(train_loop.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(train_loop.comm, "is_main_process", lambda: True)
    monkeypatch.setattr(SimpleTrainer, "write_metrics", staticmethod(gather))
    step = train_loop.DeferredMetrics()
    step.metrics_period = 20
    with EventStorage(0) as storage:
        for it, loss in enumerate([0.5, 0.25, float("nan")]):
            storage.iter = it
            step._write_metrics({"loss_a": torch.tensor(loss), "loss_b": torch.tensor(1.0)}, 0.1)
        step.write_pending_metrics(gather=False)  # the NaN is logged, not raised
        totals = [(it, v) for v, it in storage.history("total_loss").values()]
    assert totals == [(0, 1.5), (1, 1.25)]
