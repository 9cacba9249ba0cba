"""Fixtures shared by every test; helpers live in the tests/ovseg_testing package."""

import os
import time

import pytest
import torch
from ovseg_testing import ROOT, registered_ade20k, write_ade20k_fixture

# the repository's run folder: a user's trained runs live there, so no test may write in it
# (a shipped config's OUTPUT_DIR is relative to the repository root)
REPO_OUTPUT = ROOT / "output"


def _files_written_since(folder, start: float) -> list:
    found = []
    for parent, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            if os.path.getmtime(path) >= start:
                found.append(path)
    return sorted(found)


def pytest_collection_modifyitems(config, items):
    """End-to-end runs (marked ``slow``, a minute or more each) first: with ``make test``'s
    ``--dist worksteal`` a worker that is done takes the other's waiting tests, so the run
    ends on short tests, not on one worker's late end-to-end run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


def pytest_sessionstart(session):
    session.config._ovseg_started = time.time()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a test wrote into the repository's output/ (checked once, by the
    controlling process when tests run in several)."""
    if hasattr(session.config, "workerinput") or not REPO_OUTPUT.is_dir():
        return
    written = _files_written_since(REPO_OUTPUT, session.config._ovseg_started)
    if written:
        shown = "\n  ".join(written[:10])
        print(f"\nTests wrote into the repository's output/ (use tmp_path):\n  {shown}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tests (use with ``pytest.mark.usefixtures``): tiny
    models on a shared 2-core machine run several times faster than with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ade20k_root(tmp_path):
    """A dataset root holding a tiny ADE20K-150 in its real prepared layout."""
    return write_ade20k_fixture(tmp_path / "datasets")


@pytest.fixture
def ade20k_registered(ade20k_root):
    """``ade20k_root``, registered as the ADE20K splits while the test runs."""
    with registered_ade20k(ade20k_root):
        yield ade20k_root


@pytest.fixture(scope="module")
def small_ade20k(tmp_path_factory):
    """A 2-training, 1-validation image ADE20K-150, registered while the module runs."""
    root = write_ade20k_fixture(tmp_path_factory.mktemp("datasets"), n_train=2, n_val=1)
    with registered_ade20k(root):
        yield root
