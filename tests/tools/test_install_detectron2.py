"""tools/install_detectron2.py: the fallback install's fixes, placeholder and checks."""

import importlib.util
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "install_detectron2", ROOT / "tools" / "install_detectron2.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tool = _load_tool()


def _import_file(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_requirements_drop_stale_pins(tmp_path):
    setup_py = tmp_path / "setup.py"
    setup_py.write_text(
        "from setuptools import setup\n"
        "setup(name='x', install_requires=['Pillow>=7.1', 'iopath>=0.1.7,<0.1.10', "
        "'black==21.4b2', \"dataclasses; python_version<'3.7'\", 'fvcore>=0.1.5,<0.1.6'])\n"
    )
    reqs = tool.requirements_from_setup_py(setup_py)
    assert reqs == ["Pillow>=7.1", "iopath>=0.1.7", "fvcore>=0.1.5,<0.1.6"]


def test_requirements_error_names_file(tmp_path):
    setup_py = tmp_path / "setup.py"
    setup_py.write_text("print('no setup call')\n")
    with pytest.raises(SystemExit, match="setup.py: no install_requires"):
        tool.requirements_from_setup_py(setup_py)


def test_source_fixes_replace_only_removed_aliases(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "x = np.zeros(3, dtype=np.int)\n"
        "y = a.astype(np.float)\n"
        "z = np.loadtxt(f, dtype=np.str)\n"
        "b = m.astype(np.bool)\n"
        "keep = (np.int32, np.int64, np.float32, np.float_, np.bool_, np.integer)\n"
        "interp = Image.LINEAR\n"
    )
    (pkg / "b.py").write_text("nothing = 1\n")
    changed = tool.apply_source_fixes(pkg)
    assert changed == {"a.py": 5}
    text = (pkg / "a.py").read_text()
    assert "dtype=int)" in text and "astype(float)" in text and "dtype=str)" in text
    assert "astype(bool)" in text and "Image.BILINEAR" in text
    assert "(np.int32, np.int64, np.float32, np.float_, np.bool_, np.integer)" in text


def test_placeholder_names_op_and_fix(tmp_path):
    tool.write_placeholder(tmp_path)
    placeholder = _import_file("placeholder_C", tmp_path / "_C.py")
    assert placeholder.OVSEG_PLACEHOLDER is True
    with pytest.raises(AttributeError, match="box_iou_rotated.*rotated boxes.*official build"):
        _ = placeholder.box_iou_rotated
    with pytest.raises(AttributeError, match="deform_conv_forward.*deformable convolution"):
        _ = placeholder.deform_conv_forward
    with pytest.raises(AttributeError, match="COCOevalAccumulate.*use_fast_impl=False"):
        _ = placeholder.COCOevalAccumulate
    # what detectron2's collect_env calls must keep working
    assert "not built" in placeholder.get_compiler_version()
    assert placeholder.has_cuda() is False
    # import machinery probes dunders; those must stay plain AttributeErrors
    assert not hasattr(placeholder, "__path__")


def _fake_sdist(tmp_path):
    root = f"{tool.SDIST_NAME}-{tool.SDIST_VERSION}"
    files = {
        f"{root}/detectron2/__init__.py": "__version__ = '0.6'\n",
        f"{root}/detectron2/data/t.py": "a = np.int\n",
        f"{root}/LICENSE": "Apache\n",
        f"{root}/setup.py": "setup(install_requires=['tabulate', 'black==21.4b2'])\n",
    }
    path = tmp_path / tool.SDIST_FILENAME
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_stage_lays_out_pure_python_distribution(tmp_path):
    sdist = _fake_sdist(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    stage = tool.stage_pure_python(sdist, work)
    assert (stage / "detectron2" / "_C.py").is_file()
    assert (stage / "detectron2" / "data" / "t.py").read_text() == "a = int\n"
    setup_text = (stage / "setup.py").read_text()
    assert 'name="detectron2"' in setup_text
    assert "'tabulate'" in setup_text and "black" not in setup_text
    assert "ovseg_provenance.json" in setup_text


def test_sdist_hash_mismatch_is_refused(tmp_path):
    sdist = _fake_sdist(tmp_path)
    with pytest.raises(SystemExit, match="does not match the expected 5d2e9e51"):
        tool.verify_sdist(sdist)


def test_installed_copy_has_no_removed_aliases():
    import detectron2

    pkg = Path(detectron2.__file__).parent
    if not (pkg / "ovseg_provenance.json").exists():
        pytest.skip("detectron2 was not installed from the sdist by ovseg")
    offenders = []
    for path in pkg.rglob("*.py"):
        for pattern, _repl, _commit in tool.SOURCE_FIXES:
            if re.search(pattern, path.read_text()):
                offenders.append(str(path.relative_to(pkg)))
    assert offenders == []


def test_keeps_an_importable_detectron2(capsys):
    assert tool.main(["--python", sys.executable]) == 0
    assert "keeping the importable detectron2" in capsys.readouterr().out


def test_a_missing_interpreter_or_sdist_is_a_usage_error(tmp_path, capsys):
    for argv, says in [
        (["--python", str(tmp_path / "python")], "no such interpreter"),
        (["--python", sys.executable, "--method", "sdist", "--sdist", str(tmp_path / "d2.tgz")],
         "is not a file; give the"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as info:
            tool.main(argv)
        assert info.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as interpreter")
def test_detectron2_importable_reports_missing(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nexit 1\n")
    fake_python.chmod(0o755)
    assert tool.detectron2_importable(str(fake_python)) is None


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as interpreter")
def test_the_source_build_takes_a_local_clone_mirror_or_folder(tmp_path, capsys):
    # a machine without GitHub (a cluster) builds from its own copy: --repo / OVSEG_D2_REPO
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls.txt"}\n')
    fake_python.chmod(0o755)
    clone = tmp_path / "detectron2"
    clone.mkdir()
    (clone / "setup.py").write_text("")
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "setup.py"], ["commit", "-qm", "x"]):
        subprocess.run(git + args, check=True)
    bare = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(clone), str(bare)], check=True)
    assert tool.try_source_build(str(fake_python), 20, 20, repo=str(bare))
    assert tool.try_source_build(str(fake_python), 20, 20, repo=str(clone))  # a source folder
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls == [
        f"-m pip install --no-build-isolation git+file://{bare}",
        f"-m pip install --no-build-isolation {clone}",
    ]
    assert not tool.try_source_build(str(fake_python), 20, 20, repo=str(tmp_path / "none.git"))
    assert f"{tmp_path / 'none.git'} not reachable" in capsys.readouterr().out
    assert tool.source_spec("https://example.org/d2.git") == "git+https://example.org/d2.git"
