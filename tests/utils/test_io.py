"""ovseg.utils.io: atomic writes keep the old file on failure and leave no temporary."""

import json
import os
import shutil
import stat
import threading

import numpy as np
import pytest
from PIL import Image

from ovseg.utils.io import (
    TMP_PREFIX,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    publish_folder,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _temporaries(folder):
    return [n for n in os.listdir(folder) if n.startswith(TMP_PREFIX)]


@pytest.mark.parametrize("by_name", [False, True])
def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, by_name):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def half_then_fail(f):
        if by_name:
            with open(f, "wb") as g:
                g.write(b"half")
        else:
            f.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(path, half_then_fail, by_name=by_name)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_a_failing_rename_leaves_no_temporary(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(f"simulated kill before renaming {src} to {dst}")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="simulated kill"):
        atomic_write(tmp_path / "x.bin", lambda f: f.write(b"data"))
    assert os.listdir(tmp_path) == []


def test_the_temporary_is_a_hidden_sibling_with_the_prefix(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        with open(tmp, "wb") as f:
            f.write(b"x")

    atomic_write(tmp_path / "label.png", write, by_name=True)
    folder, name = os.path.split(seen[0])
    assert folder == str(tmp_path)
    assert name.startswith(TMP_PREFIX) and name.endswith("label.png"), name
    assert os.listdir(tmp_path) == ["label.png"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("by_name", [False, True])
def test_permissions_match_a_plain_open(tmp_path, umask, by_name):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain", "wb") as f:
            f.write(b"x")
        if by_name:
            atomic_write(tmp_path / "atomic", lambda p: open(p, "wb").close(), by_name=True)
        else:
            atomic_write(tmp_path / "atomic", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "atomic") == _mode(tmp_path / "plain") == 0o666 & ~umask


@pytest.mark.parametrize("fsync", [False, True])
def test_by_name_writers_get_a_path_in_the_destination_folder(tmp_path, fsync):
    label = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    png = tmp_path / "labels" / "a.png"
    atomic_write(png, lambda p: Image.fromarray(label).save(p, format="PNG"), by_name=True)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), label)

    copy = tmp_path / "copies" / "b.png"
    atomic_write(copy, lambda p: shutil.copyfile(png, p), by_name=True, fsync=fsync)
    assert copy.read_bytes() == png.read_bytes()
    assert _temporaries(tmp_path / "labels") == _temporaries(tmp_path / "copies") == []


def test_file_object_writers_and_path_like_destinations(tmp_path):
    path = tmp_path / "conf.npy"
    conf = np.arange(6, dtype=np.int64).reshape(2, 3)
    atomic_write(path, lambda f: np.save(f, conf), fsync=False)
    np.testing.assert_array_equal(np.load(path), conf)
    atomic_write(str(path), lambda f: np.save(f, conf + 1))
    np.testing.assert_array_equal(np.load(path), conf + 1)


def test_missing_folders_are_created(tmp_path):
    path = tmp_path / "a" / "b" / "c.txt"
    atomic_write_text(path, "hi")
    assert path.read_text() == "hi"


def test_a_relative_path_writes_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic_write_text("rel.txt", "here")
    assert (tmp_path / "rel.txt").read_text() == "here"
    assert _temporaries(tmp_path) == []


def test_text_is_utf8_and_json_ends_with_a_newline(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "café ☕\n", fsync=False)
    assert (tmp_path / "t.txt").read_bytes() == "café ☕\n".encode()

    obj = {"b": [1, 2], "a": {"x": 1.5}}
    atomic_write_json(tmp_path / "d.json", obj)
    text = (tmp_path / "d.json").read_text(encoding="utf-8")
    assert json.loads(text) == obj
    assert text == json.dumps(obj, indent=2) + "\n"

    atomic_write_json(tmp_path / "s.json", obj, indent=1, sort_keys=True)
    assert (tmp_path / "s.json").read_text() == json.dumps(obj, indent=1, sort_keys=True) + "\n"


def test_concurrent_writers_to_one_file_each_leave_a_whole_file(tmp_path):
    path = tmp_path / "shared.txt"
    payloads = [str(i) * 10_000 for i in range(8)]
    threads = [
        threading.Thread(target=atomic_write_text, args=(path, p), kwargs={"fsync": False})
        for p in payloads
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_text() in payloads
    assert _temporaries(tmp_path) == []


def _folder(path, text):
    path.mkdir()
    (path / "f.txt").write_text(text)
    return path


def test_published_folder_replaces_the_old_one_and_leaves_no_aside(tmp_path):
    dest = _folder(tmp_path / "world", "old")
    (dest / "stale.txt").write_text("from the old folder")
    publish_folder(_folder(tmp_path / ".new", "new"), dest, lambda: False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]
    assert sorted(p.name for p in dest.iterdir()) == ["f.txt"]
    assert (dest / "f.txt").read_text() == "new"


def test_publishing_after_another_writer_keeps_theirs_only_when_it_is_current(tmp_path):
    dest = tmp_path / "world"

    def other_writer_wins(src, dst):  # the other process renames its folder in first
        _folder(dest, "theirs")
        raise OSError(39, "Directory not empty")

    for current in (True, False):
        tmp = _folder(tmp_path / f".new-{current}", "ours")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "rename", other_writer_wins)
            if current:
                publish_folder(tmp, dest, lambda: True)
            else:
                with pytest.raises(OSError):
                    publish_folder(tmp, dest, lambda: False)
        assert (dest / "f.txt").read_text() == "theirs"
        shutil.rmtree(dest)
        shutil.rmtree(tmp)


def test_a_folder_as_destination_is_named_and_left_as_it_is(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match=r"out is a folder; give a file name"):
        atomic_write_text(tmp_path / "out", "x")
    assert os.listdir(tmp_path / "out") == [] and _temporaries(tmp_path) == []


def test_an_unwritable_folder_names_the_destination_not_the_temporary(tmp_path):
    (tmp_path / "file").write_text("x")
    # a path under a plain file cannot be created, even by root (unlike a chmod'ed folder)
    with pytest.raises(OSError, match=r"cannot write .*file/sub/out\.json: a part of its folder"):
        atomic_write_json(tmp_path / "file" / "sub" / "out.json", {})
    with pytest.raises(OSError) as info:
        atomic_write_json("/proc/ovseg_out.json", {})
    assert "cannot write /proc/ovseg_out.json" in str(info.value)
    assert TMP_PREFIX not in str(info.value)
