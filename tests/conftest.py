"""Fixtures shared by every test; helpers live in tests/ovseg_testing.py."""

import pytest
import torch
from ovseg_testing import write_ade20k_fixture


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
