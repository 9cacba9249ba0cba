"""Two jobs with one OUTPUT_DIR: a second training stops in one line naming the first, before
it writes anything; a finished training's folder is free for --resume. Two --eval-only at
once write separate results folders."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys

import pytest
from ovseg_testing import CONFIGS, ROOT, cpu_opts, subprocess_env, write_ade20k_fixture

from ovseg.engine.checks import give_back_run_folder, hold_run_folder
from ovseg.engine.defaults import load_config
from ovseg.engine.eval_results import mark_results_done, results_folder
from ovseg.utils.locks import FolderInUseError

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"


@pytest.mark.slow
def test_a_second_training_into_a_running_folder_stops_naming_the_first(tmp_path):
    out = tmp_path / "run"
    datasets = write_ade20k_fixture(tmp_path / "datasets")
    opts = cpu_opts("SemanticSegmentor", tmp_path / "cache")
    opts += ["SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(out)]
    first = hold_run_folder(str(out))  # this process trains there, as a launcher would
    try:
        # both used to train side by side, exit 0, interleaving checkpoints, metrics.json
        # and log.txt; last_checkpoint named whichever saved last
        proc = subprocess.run(
            [sys.executable, "train_net.py", "--config-file", str(CONFIG), *opts],
            cwd=ROOT,
            env=subprocess_env(datasets),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        first.release()
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last.startswith("train_net.py: error: ") and f"pid {os.getpid()}" in last, last
    assert "in use by another training" in last and "another OUTPUT_DIR" in last, last
    assert sorted(os.listdir(out)) == [".training.lock"]  # no config.yaml, log or checkpoint


def _try_to_train(folder: str, queue) -> None:
    try:
        hold_run_folder(folder)
        queue.put("held")
    except FolderInUseError as e:
        queue.put(str(e))


def test_the_run_lock_is_free_again_once_its_holder_gives_it_back(tmp_path):
    lock = hold_run_folder(str(tmp_path))
    ctx = mp.get_context("fork")  # the child inherits this process's record of its locks
    queue = ctx.Queue()
    child = ctx.Process(target=_try_to_train, args=(str(tmp_path), queue))
    child.start()
    child.join(30)
    assert f"pid {os.getpid()}" in queue.get(timeout=5)
    lock.release()
    again = hold_run_folder(str(tmp_path))
    again.release()
    with pytest.raises(FileExistsError, match="is a file"):
        hold_run_folder(str(tmp_path / ".training.lock"))


def _evaluate(cfg, weights: str, chosen, finish) -> None:
    """An --eval-only's folder choice; its results come once ``finish`` is set."""
    folder, _ = results_folder(cfg, weights)
    chosen.put(folder)
    finish.wait(30)
    mark_results_done(folder, cfg, weights)


def test_two_evaluations_at_once_write_separate_folders(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(str(CONFIG), cpu_opts("SemanticSegmentor", run, "OUTPUT_DIR", str(run)))
    (tmp_path / "a.pth").write_bytes(b"a")
    (tmp_path / "b.pth").write_bytes(b"b")
    ctx = mp.get_context("fork")
    chosen, finish = ctx.Queue(), ctx.Event()
    first = ctx.Process(target=_evaluate, args=(cfg, str(tmp_path / "a.pth"), chosen, finish))
    first.start()
    try:
        assert chosen.get(timeout=30) == str(run / "inference")
        # the first one's folder holds no results yet: it used to look free, and both wrote
        # their results (and records) into inference/
        folder, why = results_folder(cfg, str(tmp_path / "b.pth"))
        assert folder == str(run / "inference_2") and "being written" in why
    finally:
        finish.set()
        first.join(30)
    mark_results_done(folder, cfg, str(tmp_path / "b.pth"))
    assert results_folder(cfg, str(tmp_path / "a.pth"))[0] == str(run / "inference")  # free


def _train_until(folder: str, ready, stop) -> None:
    """A training holding ``folder`` until ``stop`` is set."""
    hold_run_folder(folder)
    ready.set()
    stop.wait(30)


def test_an_evaluation_beside_a_running_training_leaves_it_inference(tmp_path):
    # the training's first evaluation, later, writes inference/: an --eval-only that found it
    # empty used to write there too, and the training's results replaced its own
    run = tmp_path / "run"
    cfg = load_config(str(CONFIG), cpu_opts("SemanticSegmentor", run, "OUTPUT_DIR", str(run)))
    (tmp_path / "a.pth").write_bytes(b"a")
    ctx = mp.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    training = ctx.Process(target=_train_until, args=(str(run), ready, stop))
    training.start()
    try:
        assert ready.wait(30)
        folder, why = results_folder(cfg, str(tmp_path / "a.pth"))
        assert folder == str(run / "inference_2"), folder
        assert (
            why == f"a training is running in {run}: its own evaluations write {run / 'inference'}"
        )
        mark_results_done(folder, cfg, str(tmp_path / "a.pth"))
    finally:
        stop.set()
        training.join(30)
    # once it ended, an evaluation of other weights takes inference/, still empty
    (tmp_path / "b.pth").write_bytes(b"b")
    assert results_folder(cfg, str(tmp_path / "b.pth")) == (str(run / "inference"), "")


def _worker(ready, stop) -> None:
    """A DataLoader worker: forked from the trainer, busy while the trainer is gone."""
    ready.set()
    stop.wait(30)


def test_a_forked_worker_does_not_keep_the_folder_locked(tmp_path):
    # a forked DataLoader worker shared the trainer's lock: a worker outliving its killed
    # trainer (or a lock given back while workers ran) refused the next run in the dead one's name
    lock = hold_run_folder(str(tmp_path))
    ctx = mp.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    worker = ctx.Process(target=_worker, args=(ready, stop))
    worker.start()
    try:
        assert ready.wait(30)
        lock.release()  # as the kernel does for a killed trainer
        hold_run_folder(str(tmp_path)).release()  # the next run, the worker still alive
    finally:
        stop.set()
        worker.join(30)


def test_a_run_refused_by_its_checks_leaves_no_output_dir(tmp_path):
    # the training lock was taken before the checks: a run refused for missing data left
    # OUTPUT_DIR (and its parents) behind, holding only .training.lock
    out = tmp_path / "new" / "run"
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", str(CONFIG), "OUTPUT_DIR", str(out)],
        cwd=ROOT,
        env=subprocess_env(tmp_path / "no_datasets"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "DATASETS.TRAIN names" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "new").exists()
    lock = hold_run_folder(str(out))  # a folder made by the lock is removed with it
    give_back_run_folder(str(out))
    assert not lock.held and not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    hold_run_folder(str(tmp_path / "kept"))
    give_back_run_folder(str(tmp_path / "kept"))  # one that was there stays
    assert (tmp_path / "kept").is_dir()
