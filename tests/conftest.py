"""Fixtures shared by every test; helpers live in tests/ovseg_testing.py."""

import pytest
from ovseg_testing import write_ade20k_fixture


@pytest.fixture
def ade20k_root(tmp_path):
    """A dataset root holding a tiny ADE20K-150 in its real prepared layout."""
    return write_ade20k_fixture(tmp_path / "datasets")
