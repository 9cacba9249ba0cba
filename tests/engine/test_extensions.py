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
        if name.startswith("extproj"):  # every module these tests write
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
         r"names the file 'projects/dense_adapter/dense_adapter\.py'; it takes module names: "
         r"'projects\.dense_adapter\.dense_adapter' \(found from the repository root\)"),
        ("my_student.py", r"names the file 'my_student\.py'; it takes module names: "
                          r"'my_student', with the folder that holds it on PYTHONPATH"),
        ("{'a': 1}", "must be a list of Python module names"),
        ("['two words']", "'two words', which is not a dotted Python module name"),
    ],
)  # fmt: skip
def test_bad_extension_values_are_refused(tmp_path, value, message):
    config = write(tmp_path / "c.yaml", f"_BASE_: {ROOT / 'configs/toy/maskclip.yaml'}\n")
    with pytest.raises(ValueError, match=message):
        load_config(str(config), ["EXTENSIONS", value])


def test_a_file_outside_the_repository_is_named_as_module_and_folder(tmp_path):
    write(tmp_path / "my_student.py", "")
    config = write(tmp_path / "c.yaml", f"EXTENSIONS: ['{tmp_path}/my_student.py']\n")
    with pytest.raises(ValueError, match=f"'my_student', with PYTHONPATH={tmp_path}$"):
        load_config(str(config))


def test_a_string_is_a_one_module_list_on_the_command_line_and_refused_in_a_file(
    tmp_path, restore_sys
):
    write(tmp_path / "extproj_single.py", "")
    sys.path.insert(0, str(tmp_path))  # restored by restore_sys
    maskclip = str(ROOT / "configs/toy/maskclip.yaml")
    assert load_config(maskclip, ["EXTENSIONS", "extproj_single"]).EXTENSIONS == ["extproj_single"]
    config = write(tmp_path / "c.yaml", f"_BASE_: {maskclip}\nEXTENSIONS: extproj_single\n")
    with pytest.raises(
        ValueError, match=r"must be a list, .* write EXTENSIONS: \['extproj_single'\]"
    ):
        load_config(str(config))


def test_a_child_adds_its_modules_to_its_bases_and_the_config_keeps_them_all(tmp_path, restore_sys):
    write(tmp_path / "extproj_child.py", "")
    sys.path.insert(0, str(tmp_path))
    child = write(tmp_path / "child.yaml", f"""\
        _BASE_: {PROJECT_CONFIG}
        EXTENSIONS: ["extproj_child"]
        """)  # fmt: skip
    cfg = load_config(str(child), ["EXTENSIONS", "['projects.dense_adapter.dense_adapter']"])
    # the base's module, the child's, and the override's (already listed) once
    assert cfg.EXTENSIONS == ["projects.dense_adapter.dense_adapter", "extproj_child"]
    assert cfg.MODEL.DENSE_ADAPTER.HIDDEN_DIM == 64  # the base's module still adds its keys


def test_a_meta_architecture_nobody_registered_is_refused_with_the_close_names():
    lseg = str(ROOT / "configs/toy/lseg_toyrn_400_bs8.yaml")
    with pytest.raises(ValueError, match=r"'LSge' is not a registered .*did you mean LSeg\?.*"
                                         r"names in EXTENSIONS"):  # fmt: skip
        load_config(lseg, ["MODEL.META_ARCHITECTURE", "LSge"])


def test_a_module_registering_a_taken_name_is_refused(tmp_path, restore_sys):
    write(tmp_path / "extproj/__init__.py", "")
    write(tmp_path / "extproj/dup.py", """\
        from detectron2.modeling import META_ARCH_REGISTRY

        @META_ARCH_REGISTRY.register()
        class LSeg:
            pass
        """)  # fmt: skip
    cfg = get_cfg()
    with pytest.raises(
        ValueError,
        match=r"'extproj\.dup' registers a name that is already "
        r"taken \(An object named 'LSeg'.*new Python process",
    ):
        import_extensions(["extproj.dup"], cfg, repo_root=str(tmp_path))


def test_an_error_inside_a_module_names_the_module_file_and_line(tmp_path, restore_sys):
    write(tmp_path / "extproj/__init__.py", "")
    write(tmp_path / "extproj/raises.py", "\nraise ValueError('bad hidden dim 0')\n")
    write(tmp_path / "extproj/bad_config.py", "def add_config(cfg):\n    open('/nonexistent/x')\n")
    cfg = get_cfg()
    file = tmp_path / "extproj/raises.py"
    with pytest.raises(
        ValueError,
        match=rf"'extproj\.raises' failed while it was imported "
        rf"\({file}:2\): ValueError: bad hidden dim 0",
    ):
        import_extensions(["extproj.raises"], cfg, repo_root=str(tmp_path))
    with pytest.raises(
        ValueError,
        match=r"'extproj\.bad_config' failed in add_config\(cfg\) "
        r"\(.*bad_config\.py:2\): FileNotFoundError",
    ):
        import_extensions(["extproj.bad_config"], cfg, repo_root=str(tmp_path))


def test_what_to_do_follows_where_the_module_is(tmp_path, monkeypatch, restore_sys):
    cfg = get_cfg()
    # in the working directory, which a script does not search
    write(tmp_path / "here/extproj_here.py", "")
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(ValueError, match=r"in the working directory .*PYTHONPATH="):
        import_extensions(["extproj_here"], cfg, repo_root=str(tmp_path / "elsewhere"))
    # under a package name another folder already took
    write(tmp_path / "a/extproj/__init__.py", "")
    sys.path.insert(0, str(tmp_path / "a"))
    import extproj  # noqa: F401

    with pytest.raises(
        ValueError,
        match=r"'extproj' is already the package at .*/a/extproj, "
        r"which does not hold it; give your package a name",
    ):
        import_extensions(["extproj.mine"], cfg, repo_root=str(tmp_path / "elsewhere"))


def test_a_namespace_package_already_imported_takes_in_the_root_portion(tmp_path, restore_sys):
    # tests/projects (no __init__.py) imported as "projects" before projects/dense_adapter
    write(tmp_path / "tests/extproj_ns/test_x.py", "")
    write(tmp_path / "root/extproj_ns/mod.py", "def add_config(cfg):\n    cfg.EXTPROJ_NS = 1\n")
    sys.path.insert(0, str(tmp_path / "tests"))
    import extproj_ns  # noqa: F401  (a namespace package with one portion)

    cfg = get_cfg()
    import_extensions(["extproj_ns.mod"], cfg, repo_root=str(tmp_path / "root"))
    assert cfg.EXTPROJ_NS == 1


def test_a_single_file_module_at_the_repository_root_is_found(tmp_path, restore_sys):
    write(tmp_path / "extproj_file.py", "def add_config(cfg):\n    cfg.EXTPROJ_FILE = 1\n")
    cfg = get_cfg()
    import_extensions(["extproj_file"], cfg, repo_root=str(tmp_path))
    assert cfg.EXTPROJ_FILE == 1


def test_an_unknown_key_of_a_module_not_named_is_still_a_misspelt_key():
    key = "MODEL.DENSE_ADAPTER.NUM_BLOCKS"
    with pytest.raises(ValueError, match=f"{key} .* is not a config key.*its add_config"):
        load_config(str(ROOT / "configs/toy/maskclip.yaml"), [key, "2"])


def test_an_unknown_group_in_a_file_points_at_add_config_too(tmp_path):
    """From a file yacs names the group itself (MODEL.MY_STUDENT, under a known MODEL): the
    pointer to add_config was missing there."""
    base = ROOT / "configs/toy/maskclip.yaml"
    config = write(tmp_path / "mine.yaml", f"_BASE_: {base}\nMODEL:\n  MY_STUDENT:\n    X: 1\n")
    with pytest.raises(
        ValueError, match=r"MODEL\.MY_STUDENT \(set in config file .*its add_config"
    ):
        load_config(str(config))
    # a plain misspelt key is only that, on the command line or in a file
    typo = write(tmp_path / "typo.yaml", f"_BASE_: {base}\nSOLVER:\n  BASE_LRR: 0.1\n")
    for args in ((str(typo),), (str(base), ["SOLVER.BASE_LRR", "1"])):
        with pytest.raises(ValueError, match="did you mean SOLVER.BASE_LR") as info:
            load_config(*args)
        assert "add_config" not in str(info.value)


def test_a_yaml_file_that_is_no_mapping_is_refused_in_one_line(tmp_path):
    config = write(tmp_path / "notes.yaml", "just a sentence\n")
    with pytest.raises(ValueError, match="notes.yaml is not a config: its YAML is a str"):
        load_config(str(config))
