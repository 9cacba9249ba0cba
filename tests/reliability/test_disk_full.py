"""A disk that fills up while a file is written: the previous file stays, the temporary goes,
and the error names the file, the space it needs and the space free; a training run whose
checkpoint does not fit ends in one line naming the checkpoint kept, and --resume continues
from it. ENOSPC is simulated (``os.fsync`` of ``ovseg.utils.io`` failing, as it does where the
file system allocates at flush time): a real full disk needs a mount, so root."""

from __future__ import annotations

import errno
import logging
import os

import pytest
import torch
from ovseg_testing import CONFIGS, cpu_opts, run_patched, small_semfpn_opts, write_ade20k_fixture
from ovseg_testing.logs import records

from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.utils import io
from ovseg.utils.io import DiskFullError, atomic_write, atomic_write_text

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"


def _full_disk(monkeypatch, after: int = 0):
    """Every fsync of ovseg.utils.io after the first ``after`` fails with ENOSPC."""
    calls = []
    fsync = os.fsync

    def full(fd):
        calls.append(fd)
        if len(calls) > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    monkeypatch.setattr(io.os, "fsync", full)


def test_a_full_disk_keeps_the_old_file_and_names_what_it_needs(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    atomic_write_text(path, "old\n")
    _full_disk(monkeypatch)
    with pytest.raises(DiskFullError) as info:
        atomic_write(path, lambda f: f.write(b"x" * 5000))
    message = str(info.value)
    assert message.startswith(f"cannot write {path}: no space left on device"), message
    assert "it needs more than 4.9 kB" in message and f"free in {tmp_path})" in message
    assert info.value.errno == errno.ENOSPC and info.value.needed is None
    assert path.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["result.json"]


def test_a_writer_error_raised_while_the_disk_was_full_is_a_full_disk(tmp_path):
    # torch.save's zip writer raises "unexpected pos" while handling the OSError
    def write(f):
        f.write(b"x" * 100)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            # as torch: the OSError is the context, not the cause
            message = "[enforce fail at inline_container.cc:672] unexpected pos"
            raise RuntimeError(message)  # noqa: B904

    with pytest.raises(DiskFullError, match=r"it needs about 2\.0 MB"):
        atomic_write(tmp_path / "model.pth", write, size=2 << 20)
    assert os.listdir(tmp_path) == []


def _train(out, max_iter=4, resume=False):
    opts = small_semfpn_opts(out, max_iter)
    trainer = Trainer(load_config(str(CONFIG), opts))
    trainer.resume_or_load(resume=resume)
    trainer.test = lambda *args, **kwargs: {}
    trainer.train()


@pytest.mark.usefixtures("one_torch_thread", "small_ade20k")
def test_a_checkpoint_that_does_not_fit_ends_the_run_and_resume_continues(tmp_path, monkeypatch):
    out = tmp_path / "run"
    # every later write fails too (metrics.json when training ends), as on a full disk
    _full_disk(monkeypatch, after=2)  # model_0000001.pth and last_checkpoint fit
    with records("detectron2.engine.train_loop", logging.ERROR) as logged:
        with pytest.raises(DiskFullError) as info:
            _train(out)
    message = str(info.value)
    assert f"cannot write {out / 'model_0000003.pth'}: no space left on device" in message
    assert "it needs about" in message
    assert f"last checkpoint {out / 'model_0000001.pth'} is kept: --resume" in message
    # detectron2 logs the error that ended training: one line, not a traceback
    assert logged and logged[-1].exc_info is None and message in logged[-1].getMessage()
    assert not [n for n in os.listdir(out) if n.startswith(io.TMP_PREFIX)]
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    monkeypatch.undo()  # space freed
    _train(out, resume=True)
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 3


def test_train_net_reports_a_full_disk_in_one_line(tmp_path):
    # train_net.py whose torch.save finds the disk full: the first checkpoint fails
    patch = (
        "import errno, torch\n"
        "def full(obj, f): raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "torch.save = full\n"
    )
    out = tmp_path / "run"
    opts = cpu_opts("SemanticSegmentor", tmp_path / "cache")
    opts += ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(out)]
    datasets = write_ade20k_fixture(tmp_path / "datasets", n_train=2, n_val=1)
    proc = run_patched(
        patch, "train_net.py", "--config-file", str(CONFIG), *opts, datasets=datasets
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = f"train_net.py: error: cannot write {out / 'model_0000000.pth'}: no space left"
    assert error in proc.stderr and "no checkpoint of this run was saved yet" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]


def test_a_full_disk_elsewhere_is_not_blamed_on_the_file_written(tmp_path):
    # an ENOSPC naming another file (/dev/shm full, a handled one behind another error) was
    # reported as the written file's, with its folder's plenty of free space
    elsewhere = OSError(errno.ENOSPC, "No space left on device", "/dev/shm/torch_123")
    assert io.as_disk_full(elsewhere, str(tmp_path)).path == "/dev/shm/torch_123"

    def fails_after_another_disk_was_full(f):
        try:
            raise elsewhere
        except OSError:
            raise ValueError("a value the writer refused") from None

    with pytest.raises(ValueError, match="a value the writer refused"):
        atomic_write(tmp_path / "x.bin", fails_after_another_disk_was_full)
    assert os.listdir(tmp_path) == []
