"""Fixtures for the dataset tests: the prepare scripts as modules and raw-file writers."""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from ovseg_testing import ROOT
from PIL import Image

DATASETS_DIR = ROOT / "datasets"


@pytest.fixture(scope="session")
def prepare_script():
    """Import ``datasets/<name>.py`` as a module (the scripts import their helpers from there)."""
    if str(DATASETS_DIR) not in sys.path:
        sys.path.insert(0, str(DATASETS_DIR))

    def load(name: str):
        return importlib.import_module(name)

    return load


class RawWriter:
    """Write tiny files in the official raw formats."""

    @staticmethod
    def jpg(path: Path, height: int = 6, width: int = 8) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG")
        return path

    @staticmethod
    def png(path: Path, array, palette: bool = False) -> Path:
        """Write a label PNG: grey (``L``/``RGB``) or, like VOC's SegmentationClass, palette."""
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.asarray(array, dtype=np.uint8)
        if palette:
            image = Image.new("P", (array.shape[1], array.shape[0]))
            image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
            image.frombytes(array.tobytes())
        else:
            image = Image.fromarray(array)
        image.save(path, format="PNG")
        return path

    @staticmethod
    def mat(path: Path, label_map) -> Path:
        """Write a PASCAL Context ``.mat`` with a uint16 ``LabelMap``."""
        import scipy.io

        path.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(path), {"LabelMap": np.asarray(label_map, dtype=np.uint16)})
        return path

    @staticmethod
    def lines(path: Path, items) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i}\n" for i in items))
        return path


@pytest.fixture
def raw():
    return RawWriter()


def read_label(path: Path) -> np.ndarray:
    with Image.open(path) as f:
        return np.asarray(f)


@pytest.fixture
def read():
    """Read a written label PNG back as an array (8- or 16-bit)."""
    return read_label
