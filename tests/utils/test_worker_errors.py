"""A launched worker's error reaches its launcher as itself: the tools' one-line handlers
(a full disk, out of memory, an unreadable file) work with --num-gpus N as with one process."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.multiprocessing as mp

from ovseg import compat
from ovseg.utils.io import DiskFullError
from ovseg.utils.worker_errors import quiet_peer_failures, relayed_errors, relaying


def _full_disk_on_rank_one(out_dir: str) -> None:
    from detectron2.utils import comm

    if comm.get_rank() == 1:
        path = f"{out_dir}/model_final.pth"
        message = f"no space left to write {path}"
        raise DiskFullError(message, path=path, needed=10, free=1, code=28)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_a_workers_error_is_raised_in_the_launcher_as_itself(tmp_path):
    # torch's spawn used to end the run in ProcessRaisedException, the worker's traceback as
    # text: train_net.py's one-line handlers never saw the DiskFullError
    with pytest.raises(DiskFullError, match="no space left to write") as info:
        compat.launch(_full_disk_on_rank_one, 2, args=(str(tmp_path),))
    assert (info.value.path, info.value.free, info.value.errno) == (
        f"{tmp_path}/model_final.pth",
        1,
        28,
    )
    cause = info.value.__cause__
    assert isinstance(cause, mp.ProcessRaisedException) and cause.error_index == 1
    assert "Traceback" in str(cause) and "_full_disk_on_rank_one" in str(cause)  # for logs


class _Unsayable(RuntimeError):
    def __init__(self):
        super().__init__("holds a lock")
        self.held = lambda: None


def _raise(error: Exception) -> None:
    raise error


def test_an_error_that_cannot_travel_leaves_torchs_report(tmp_path):
    # an attribute JSON cannot hold: the worker leaves nothing, the launcher torch's report
    with pytest.raises(_Unsayable):
        relaying(str(tmp_path), _raise, _Unsayable())
    assert os.listdir(tmp_path) == []  # nothing left for the launcher
    torch_report = mp.ProcessRaisedException("Traceback ... _Unsayable", 0, 1234)
    with pytest.raises(mp.ProcessRaisedException):
        with relayed_errors():
            raise torch_report
    # an error that travels is raised from torch's report, and the folder is removed
    with pytest.raises(ValueError, match="bad value") as info:
        with relayed_errors() as folder:
            with pytest.raises(ValueError):
                relaying(folder, _raise, ValueError("bad value"))
            raise torch_report
    assert info.value.__cause__ is torch_report and not os.path.exists(folder)


def test_the_failed_workers_own_error_wins_over_a_peers_copy(tmp_path, monkeypatch):
    # rank 0 failed; rank 1 stopped with all_ok's copy of its text (peer_failed) and, ending
    # first, was the one torch reported: the launcher raised that RuntimeError copy
    from detectron2.utils import comm

    own = ValueError("Cannot decode image file 'a.jpg'")
    copy = RuntimeError("rank 0: ValueError: Cannot decode image file 'a.jpg'")
    copy.peer_failed = True
    with pytest.raises(ValueError, match="Cannot decode") as info:
        with relayed_errors() as folder:
            for rank, error in ((0, own), (1, copy)):
                monkeypatch.setattr(comm, "get_local_rank", lambda rank=rank: rank)
                with pytest.raises(type(error)):
                    relaying(folder, _raise, error)
            raise mp.ProcessRaisedException("Traceback ... RuntimeError", 1, 1234)
    assert info.value.__cause__.error_index == 1


# what gloo raises in a rank whose peer ended while it waited in a collective
_ECHO = "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [::1]:5"


def test_a_gloo_echo_of_a_peers_failure_defers_to_the_peers_own_error(tmp_path, monkeypatch):
    # rank 1 failed (a corrupt image); rank 0, waiting in the evaluator's barrier, got gloo's
    # "closed by peer" and, under load, ended first: the launcher must raise rank 1's error
    from detectron2.utils import comm

    own = ValueError("Cannot decode image file 'a.jpg'")
    with pytest.raises(ValueError, match="Cannot decode"):
        with relayed_errors() as folder:
            for rank, error in ((1, own), (0, RuntimeError(_ECHO))):
                monkeypatch.setattr(comm, "get_local_rank", lambda rank=rank: rank)
                with pytest.raises(type(error)):
                    relaying(folder, _raise, error)
            raise mp.ProcessRaisedException("Traceback ... RuntimeError", 0, 1234)


def _log_exception(log: logging.Logger, error: Exception) -> None:
    try:
        raise error
    except Exception:
        log.exception("Exception during training:")


def test_a_ranks_echo_of_a_peers_failure_is_one_warning_not_its_traceback(caplog):
    # detectron2's train loop logs every error with its traceback; rank 0's echo of rank 1's
    # failure printed a gloo traceback before the launcher ended it, reading as a 2nd failure
    log = logging.getLogger("ovseg.tests.train_loop_stand_in")
    with caplog.at_level(logging.INFO, logger=log.name):
        with quiet_peer_failures(log.name):
            _log_exception(log, RuntimeError(_ECHO))
            (echo,) = caplog.records
            assert echo.levelname == "WARNING" and echo.exc_info is None
            assert "another process of this run failed" in echo.getMessage()
            assert "Traceback" not in caplog.text
            _log_exception(log, RuntimeError("CUDA error: an illegal memory access"))
            assert caplog.records[-1].exc_info is not None  # this rank's own error: in full
        caplog.clear()
        _log_exception(log, RuntimeError(_ECHO))  # outside: as it was
        assert caplog.records[-1].exc_info is not None and "Traceback" in caplog.text
