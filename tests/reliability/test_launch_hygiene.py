"""Multi-process runs (CPU, gloo) as a script starts them: two at once both start (the
rendezvous port is picked free), and workers die with their launcher, even when it is
killed by SIGKILL or SIGTERM while started in the background (SIGINT ignored)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ovseg_testing import CONFIGS, ROOT, cpu_opts, subprocess_env

from ovseg.compat import default_dist_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"
STARTED = "Starting training from iteration 0"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(out: Path, datasets: Path):
    opts = cpu_opts("SemanticSegmentor", out / "cache")
    opts += ["SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "100000"]
    opts += ["TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(out)]
    log = open(out.parent / f"{out.name}.log", "w")

    def background_job():  # what `cmd &` in a script does: SIGINT and SIGQUIT ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    proc = subprocess.Popen(
        [sys.executable, "train_net.py", "--config-file", str(CONFIG), "--num-gpus", "2", *opts],
        cwd=ROOT,
        env=subprocess_env(datasets),
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=background_job,
        start_new_session=True,
    )
    return proc, out.parent / f"{out.name}.log"


def _wait_started(runs, timeout=240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        logs = [log.read_text() for _, log in runs]
        if all(STARTED in text for text in logs):
            return
        for (proc, log), text in zip(runs, logs):
            assert proc.poll() is None, f"{log.name} exited {proc.returncode}:\n{text[-3000:]}"
        time.sleep(1.0)
    raise AssertionError(
        "runs did not start:\n" + "\n".join(log.read_text()[-2000:] for _, log in runs)
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from ovseg_testing import write_ade20k_fixture

    root = tmp_path_factory.mktemp("hygiene")
    datasets = write_ade20k_fixture(root / "datasets")
    runs = [_start(root / name, datasets) for name in ("first", "second")]
    try:
        yield runs
    finally:
        for proc, _ in runs:
            for pid in _children(proc.pid):
                os.kill(pid, signal.SIGKILL)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_default_rendezvous_is_a_free_port():
    default = "tcp://127.0.0.1:49152"
    assert default_dist_url(default, default, num_machines=1) == "auto"
    assert default_dist_url("tcp://10.0.0.1:1234", default, 1) == "tcp://10.0.0.1:1234"
    assert default_dist_url(default, default, num_machines=2) == default


def test_two_multi_process_runs_at_once_both_start(two_runs):
    _wait_started(two_runs)
    for proc, _ in two_runs:
        assert len(_children(proc.pid)) >= 2  # the launcher's two workers


@pytest.mark.parametrize("run, sig", [(0, signal.SIGKILL), (1, signal.SIGTERM)])
def test_workers_die_with_their_launcher(two_runs, run, sig):
    _wait_started(two_runs)
    proc, log = two_runs[run]
    workers = [pid for pid in _children(proc.pid) if "spawn" in _cmdline(pid)]
    assert len(workers) == 2, [_cmdline(pid) for pid in _children(proc.pid)]
    proc.send_signal(sig)
    proc.wait(timeout=10)
    deadline = time.time() + 10
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in workers if _alive(pid)]
    assert not survivors, f"workers {survivors} outlived their launcher ({sig.name})"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
