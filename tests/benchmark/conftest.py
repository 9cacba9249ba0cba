"""Fixtures of the benchmark tests: a tiny toy world on disk, registered for the module."""

import pytest

from ovseg.data.datasets.common import datasets_root
from ovseg.data.datasets.toy_world import build_toy_world, register_all_toy_world


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    """A dataset root holding a 6-image toy world, registered while the module runs."""
    root = tmp_path_factory.mktemp("toy_datasets")
    build_toy_world(str(root), num_train=6, num_val=2, seed=0)
    register_all_toy_world(str(root))
    yield root
    register_all_toy_world(datasets_root())
