"""Fixtures shared by every test; helpers live in the tests/ovseg_testing package."""

import pytest
import torch
from ovseg_testing import registered_ade20k, write_ade20k_fixture


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
