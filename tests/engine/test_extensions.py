"""EXTENSIONS: a config names the modules it needs; load_config imports them (and their
add_config) before it reads the rest, from sys.path or the repository root, and refuses a
name it cannot import with what to do."""

from __future__ import annotations

import sys
import textwrap

import pytest
from ovseg_testing import ROOT

from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY

from ovseg import add_ovseg_config
from ovseg.engine.defaults import load_config
from ovseg.engine.extensions import import_extensions, requested_extensions

PROJECT_CONFIG = ROOT / "projects/dense_adapter/configs/toy_dense_adapter_300_bs16.yaml"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def restore_sys(monkeypatch):
    """sys.path and sys.modules as they were, whatever a test imports or appends."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("extproj"):
            del sys.modules[name]


def test_project_config_registers_its_student_and_keys():
    cfg = load_config(str(PROJECT_CONFIG))
    assert cfg.EXTENSIONS == ["projects.dense_adapter.dense_adapter"]
    assert cfg.MODEL.META_ARCHITECTURE in META_ARCH_REGISTRY
    assert cfg.MODEL.DENSE_ADAPTER.HIDDEN_DIM == 64  # the module's key, set by the file
    assert cfg.MODEL.DENSE_ADAPTER.NUM_BLOCKS == 1  # its default, added by add_config


def test_a_child_config_inherits_the_extensions_and_overrides_set_them(tmp_path):
    child = write(tmp_path / "child.yaml", f"""\
        _BASE_: {PROJECT_CONFIG}
        MODEL:
          DENSE_ADAPTER:
            NUM_BLOCKS: 2
        """)  # fmt: skip
    assert load_config(str(child)).MODEL.DENSE_ADAPTER.NUM_BLOCKS == 2
    # the toy LSeg config knows no MODEL.DENSE_ADAPTER until an override names the module
    lseg = str(ROOT / "configs/toy/lseg_toyrn_400_bs8.yaml")
    opts = ["EXTENSIONS", "['projects.dense_adapter.dense_adapter']",
            "MODEL.DENSE_ADAPTER.HIDDEN_DIM", "8"]  # fmt: skip
    assert requested_extensions(lseg, opts) == ["projects.dense_adapter.dense_adapter"]
    assert load_config(lseg, opts).MODEL.DENSE_ADAPTER.HIDDEN_DIM == 8


def test_a_module_under_the_repository_root_is_found_from_anywhere(tmp_path, restore_sys):
    write(tmp_path / "extproj/__init__.py", "")
    write(tmp_path / "extproj/student.py", """\
        from detectron2.config import CfgNode as CN

        def add_config(cfg):
            cfg.MODEL.EXTPROJ = CN()
            cfg.MODEL.EXTPROJ.WIDTH = 3
        """)  # fmt: skip
    assert str(tmp_path) not in sys.path
    cfg = get_cfg()
    add_ovseg_config(cfg)
    import_extensions(["extproj.student"], cfg, repo_root=str(tmp_path))
    assert cfg.MODEL.EXTPROJ.WIDTH == 3
    assert str(tmp_path) in sys.path


def test_a_module_that_cannot_be_imported_says_what_to_do(tmp_path, restore_sys):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    with pytest.raises(ValueError, match=r"'extproj\.nothing'.*PYTHONPATH"):
        import_extensions(["extproj.nothing"], cfg, repo_root=str(tmp_path))
    # an import that fails inside the extension is its own error, not "cannot find it"
    write(tmp_path / "extproj/__init__.py", "")
    write(tmp_path / "extproj/broken.py", "import extproj_missing_dependency\n")
    with pytest.raises(ModuleNotFoundError, match="extproj_missing_dependency"):
        import_extensions(["extproj.broken"], cfg, repo_root=str(tmp_path))


@pytest.mark.parametrize(
    "value, message",
    [
        ("projects/dense_adapter/dense_adapter.py",
         r"not a dotted Python module name \(a module name, not a file: "
         r"'projects\.dense_adapter\.dense_adapter'\)"),
        ("{'a': 1}", "must be a list of Python module names"),
        ("['two words']", "'two words', which is not a dotted Python module name"),
    ],
)  # fmt: skip
def test_bad_extension_values_are_refused(tmp_path, value, message):
    config = write(tmp_path / "c.yaml", f"_BASE_: {ROOT / 'configs/toy/maskclip.yaml'}\n")
    with pytest.raises(ValueError, match=message):
        load_config(str(config), ["EXTENSIONS", value])


def test_an_unknown_key_of_a_module_not_named_is_still_a_misspelt_key():
    key = "MODEL.DENSE_ADAPTER.NUM_BLOCKS"
    with pytest.raises(ValueError, match=f"{key} .* is not a config key"):
        load_config(str(ROOT / "configs/toy/maskclip.yaml"), [key, "2"])


def test_a_yaml_file_that_is_no_mapping_is_refused_in_one_line(tmp_path):
    config = write(tmp_path / "notes.yaml", "just a sentence\n")
    with pytest.raises(ValueError, match="notes.yaml is not a config: its YAML is a str"):
        load_config(str(config))
