"""Two jobs on one pseudo-label (or pseudo-instance) store: the second is refused, naming the
first; a finished or killed job lets the next one resume."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal

import numpy as np
import pytest
from ovseg_testing import registered_ade20k, run_main, write_ade20k_fixture
from ovseg_testing.pseudo import make_store

from ovseg.pseudo import PseudoLabelStore
from ovseg.utils.locks import FolderInUseError, FolderLock

LABEL = np.zeros((4, 4), np.uint8)
CONFIDENCE = np.ones((4, 4))


def _first_job(root: str, ready, go, finalize: bool) -> None:
    """Create the store, label two images, say so, wait, label a third, then finish."""
    store = make_store(root)
    for i in range(2):
        store.write(f"a{i}", LABEL, CONFIDENCE)
    ready.set()
    go.wait(30)
    store.write("a2", LABEL, CONFIDENCE)
    if finalize:
        store.finalize()


def _start_first_job(root, finalize=True):
    ctx = mp.get_context("fork")
    ready, go = ctx.Event(), ctx.Event()
    job = ctx.Process(target=_first_job, args=(str(root), ready, go, finalize))
    job.start()
    assert ready.wait(30), "the first job never created its store"
    return job, go


def test_a_second_generation_into_a_running_store_is_refused(tmp_path):
    root = tmp_path / "store"
    job, go = _start_first_job(root)
    try:
        # the same command again (a retry, a SLURM array): it used to label alongside, its
        # finalize dropped the first job's journals, and the manifest kept 4 of 40 images
        with pytest.raises(FolderInUseError) as e:
            make_store(root)
        assert f"pid {job.pid}" in str(e.value) and "pseudo-label generation" in str(e.value)
        assert isinstance(e.value, OSError)  # the tools report it in one line
    finally:
        go.set()
        job.join(30)
    assert job.exitcode == 0
    # the first job's labels are all recorded, and the next job resumes the store
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["count"] == 3 and sorted(manifest["checksums"]) == ["a0", "a1", "a2"]
    again = make_store(root)
    assert all(again.is_valid(f"a{i}") for i in range(3))
    again.finalize()


def test_a_refused_generation_leaves_the_running_jobs_log_and_config_alone(tmp_path, capsys):
    # the tool's setup wrote its config.yaml over the running job's and appended its log to
    # that job's log.txt before the store's lock refused it
    datasets = write_ade20k_fixture(tmp_path / "datasets", n_train=1, n_val=1)
    root, run_dir = tmp_path / "store", tmp_path / "store_generation"
    run_dir.mkdir()
    (run_dir / "log.txt").write_text("the running job's log\n")
    (run_dir / "config.yaml").write_text("the running job's config\n")
    argv = [
        "--config-file", "configs/ade20k/maskclip/maskclip_vitb16_bs1.yaml",
        "--dataset", "ade20k_sem_seg_train", "--output", str(root), "--no-progress",
        "MODEL.CLIP.MODEL_NAME", "configs/clip/tiny_vit.json", "MODEL.CLIP.PRETRAINED", "",
        "MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache"), "MODEL.DEVICE", "cpu",
    ]  # fmt: skip
    job, go = _start_first_job(root)
    try:
        with registered_ade20k(datasets):
            assert run_main("tools/generate_pseudo_labels.py", argv) == 2
    finally:
        go.set()
        job.join(30)
    err = capsys.readouterr().err
    assert "in use by another pseudo-label generation: pid" in err, err[-2000:]
    assert "Traceback" not in err
    assert (run_dir / "log.txt").read_text() == "the running job's log\n"
    assert (run_dir / "config.yaml").read_text() == "the running job's config\n"
    assert job.exitcode == 0


def test_a_killed_generation_leaves_the_store_to_the_next_job(tmp_path):
    root = tmp_path / "store"
    job, _ = _start_first_job(root, finalize=False)
    os.kill(job.pid, signal.SIGKILL)
    job.join(30)
    store = make_store(root)  # the kernel dropped the dead job's lock
    assert store.is_valid("a0") and store.is_valid("a1")
    assert store.finalize() == 2
    PseudoLabelStore.open(str(root))  # training reads it


def test_one_process_may_reopen_its_own_store(tmp_path):
    # a resume in the same process (tests, notebooks) takes the lock it already holds
    first = make_store(tmp_path / "s")
    second = make_store(tmp_path / "s")
    second.finalize()
    assert first._lock.held and not second._lock.held
    first.finalize()
    with FolderLock(str(tmp_path / "s"), "test", ".generation.lock"):
        pass  # given back by both


def test_a_file_system_without_locks_lets_the_job_run(tmp_path, monkeypatch, caplog):
    # NFS without a lock daemon answers ENOLCK: that is no other job, and refusing would stop
    # every training and generation there; only "held" (EWOULDBLOCK) refuses
    import errno
    import logging

    from ovseg.utils import locks

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="ovseg.utils.locks"):
        lock = FolderLock(str(tmp_path), "training").acquire()
    assert not lock.held and "this file system takes no locks" in caplog.text
    lock.release()

    def held(fd, op):
        raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")

    monkeypatch.setattr(locks.fcntl, "flock", held)
    with pytest.raises(FolderInUseError, match="in use by another training"):
        FolderLock(str(tmp_path), "training").acquire()
