"""setuptools hook: a built ovseg carries the repository's configs and toy CLIPs.

The metadata is pyproject.toml's. This only adds ``configs/`` (every YAML config and the
open_clip JSON model configs) and ``checkpoints/`` (the toy CLIPs) to a wheel as
``ovseg/_shipped/``, so an installed ovseg (``pip install .``, a wheel, the sdist) runs
``ovseg.Predictor("toy/maskclip.yaml")`` and the toy configs from any folder: see
``ovseg.engine.defaults.REPO_ROOT``. An editable install reads them from the checkout.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# repository folder -> the files of it a wheel carries (MANIFEST.in puts them in the sdist)
SHIPPED = {"configs": ("**/*.yaml", "**/*.json"), "checkpoints": ("*.pt", "README.md")}
SHIPPED_DIR = Path("ovseg") / "_shipped"


def shipped_files(root: Path = ROOT) -> list:
    """(source, path inside the package tree) of every shipped file, in path order."""
    files = []
    for folder, patterns in SHIPPED.items():
        for pattern in patterns:
            for source in sorted((root / folder).glob(pattern)):
                files.append((source, SHIPPED_DIR / source.relative_to(root)))
    missing = [folder for folder in SHIPPED if not (root / folder).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} missing beside {root / 'setup.py'}: build ovseg from a "
            "checkout of the repository or from its sdist, which hold them"
        )
    return files


class BuildPyWithShipped(build_py):
    """build_py, then the shipped files into the built package (not in editable mode)."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / SHIPPED_DIR
        shutil.rmtree(target, ignore_errors=True)  # a file removed since the last build
        for source, relative in shipped_files():
            destination = Path(self.build_lib) / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(source), str(destination))

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return outputs + [str(Path(self.build_lib) / rel) for _, rel in shipped_files()]


setup(cmdclass={"build_py": BuildPyWithShipped})
