"""PseudoLabelStore: layout, round trips, atomic writes, and refusing foreign stores."""

import json
import os

import numpy as np
import pytest
from ovseg_testing import NAMES5, make_store
from PIL import Image

from ovseg.pseudo import PseudoLabelStore, image_id_of
from ovseg.pseudo import store as store_module


def test_uint8_round_trip_and_layout(tmp_path):
    store = make_store(tmp_path / "s")
    label = np.array([[0, 1, 2], [3, 4, 255]], np.int64)
    conf = np.array([[0.0, 0.2, 0.5], [0.7, 1.0, 0.1]])
    store.write("a", label, conf)

    assert store.has("a") and not store.has("b")
    assert store.path_for("a") == str(tmp_path / "s" / "labels" / "a.png")
    with Image.open(store.path_for("a")) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), label)
    with Image.open(tmp_path / "s" / "confidence" / "a.png") as im:
        assert im.mode == "L"
        # round(c * 255): 0.2 -> 51, 0.5 -> 127.5 -> 128 (round half to even), 0.7 -> 178.5
        np.testing.assert_array_equal(np.asarray(im), [[0, 51, 128], [178, 255, 26]])

    got_label, got_conf = store.read("a")
    assert got_label.dtype == np.uint8
    np.testing.assert_array_equal(got_label, label)
    assert got_conf.dtype == np.float32
    np.testing.assert_allclose(got_conf, conf, atol=0.5 / 255 + 1e-7)

    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["label_dtype"] == "uint8" and manifest["ignore_value"] == 255
    assert manifest["vocabulary"] == NAMES5 and manifest["count"] == 0
    assert manifest["created"] and manifest["dataset"] == "fake_train"
    assert store.finalize() == 1
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["count"] == 1
    assert store.image_ids() == ("a",)


def test_uint16_round_trip_for_large_vocabularies(tmp_path):
    names = [f"class {i}" for i in range(300)]
    store = make_store(tmp_path / "s", names=names)
    assert store.ignore_value == 65535 and store.label_dtype == np.uint16
    label = np.array([[0, 255, 256], [299, 65535, 17]])
    store.write("big", label, np.full(label.shape, 0.5))
    with Image.open(store.path_for("big")) as im:
        assert im.mode.startswith("I;16")
    got, _ = store.read("big")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, label)
    with pytest.raises(ValueError, match=r"\[300\].*300-name vocabulary.*ignore value 65535"):
        store.write("x", np.array([[300]]), np.ones((1, 1)))


def test_bad_writes_are_refused_with_the_values(tmp_path):
    store = make_store(tmp_path / "s")
    with pytest.raises(ValueError, match=r"values \[5, 9\]"):
        store.write("a", np.array([[5, 9, 0]]), np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"confidence must be finite and in \[0, 1\]"):
        store.write("a", np.zeros((1, 2), int), np.array([[0.5, 1.5]]))
    with pytest.raises(ValueError, match="confidence must be finite"):
        store.write("a", np.zeros((1, 2), int), np.array([[0.5, np.nan]]))
    with pytest.raises(ValueError, match=r"\(1, 2\) and confidence \(2, 1\)"):
        store.write("a", np.zeros((1, 2), int), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="not an integer"):
        store.write("a", np.zeros((1, 2)), np.zeros((1, 2)))
    assert not store.has("a") and os.listdir(tmp_path / "s" / "confidence") == []


@pytest.mark.parametrize("bad", ["a/b", "..", ".", "", "x\\y", ".tmp-x"])
def test_image_ids_that_cannot_be_file_names_are_refused(tmp_path, bad):
    store = make_store(tmp_path / "s")
    with pytest.raises(ValueError, match="image_id"):
        store.path_for(bad)


def test_image_id_of_prefers_image_id_then_file_stem():
    assert image_id_of({"image_id": "x1", "file_name": "/a/b/c.jpg"}) == "x1"
    assert image_id_of({"image_id": 17, "file_name": "/a/b/c.jpg"}) == "17"
    assert image_id_of({"file_name": "/a/b/ADE_train_001.jpg"}) == "ADE_train_001"
    with pytest.raises(ValueError, match="path separator"):
        image_id_of({"image_id": "dir/name"})


def test_crash_between_confidence_and_label_is_not_done_and_rerun_completes(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s")
    real_replace = os.replace

    def replace_but_not_labels(src, dst):
        if os.path.dirname(dst).endswith("labels"):
            raise OSError("simulated kill before the label was renamed")
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", replace_but_not_labels)
    label, conf = np.array([[1, 2]]), np.array([[0.3, 0.9]])
    with pytest.raises(OSError, match="simulated kill"):
        store.write("a", label, conf)
    assert os.path.isfile(store.confidence_path_for("a"))  # confidence went first
    assert not store.has("a") and store.image_ids() == ()
    assert os.listdir(tmp_path / "s" / "labels") == []  # the temporary file was removed

    monkeypatch.setattr(store_module.os, "replace", real_replace)
    store.write("a", label, conf)
    assert store.has("a")
    np.testing.assert_array_equal(store.read("a")[0], label)


def test_stale_temporaries_are_removed_on_resume(tmp_path):
    store = make_store(tmp_path / "s")
    stale = tmp_path / "s" / "labels" / ".tmp-abc123a.png"
    stale.write_bytes(b"half a png")
    assert store.image_ids() == ()
    make_store(tmp_path / "s")  # the same manifest: resume
    assert not stale.exists()


def test_create_resumes_an_identical_store_and_refuses_a_different_one(tmp_path):
    first = make_store(tmp_path / "s", threshold=0.5)
    first.write("a", np.array([[0]]), np.array([[1.0]]))
    again = make_store(tmp_path / "s", threshold=0.5, command="python tools/x.py --again")
    assert again.has("a") and again.manifest["created"] == first.manifest["created"]

    with pytest.raises(ValueError) as e:
        PseudoLabelStore.create(
            str(tmp_path / "s"),
            {
                "fingerprint": "f" * 64,
                "teacher": {"clip": "c" * 64, "settings": {"method": "Fake", "templates": "vild"}},
                "vocabulary": NAMES5,
                "threshold": 0.25,
                "dataset": "fake_train",
            },
        )
    msg = str(e.value)
    assert "manifest.threshold: existing 0.5, now 0.25" in msg
    assert "manifest.teacher.settings.templates: existing 'single', now 'vild'" in msg
    assert "another --output" in msg and "delete" in msg
    assert "fingerprint" not in msg and "vocabulary" not in msg  # those agree


def test_create_refuses_unlabelled_folder_with_pngs_and_bad_manifests(tmp_path):
    (tmp_path / "s" / "labels").mkdir(parents=True)
    (tmp_path / "s" / "labels" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no manifest.json"):
        make_store(tmp_path / "s")
    with pytest.raises(ValueError, match=r"lacks \['fingerprint'\]"):
        PseudoLabelStore.create(str(tmp_path / "t"), {"vocabulary": ["a"], "threshold": 0})
    with pytest.raises(ValueError, match="threshold 1.5 is outside"):
        make_store(tmp_path / "u", threshold=1.5)


def test_open_refuses_another_teacher_or_vocabulary_naming_the_field(tmp_path):
    make_store(tmp_path / "s")
    ok = PseudoLabelStore.open(tmp_path / "s", expect={"fingerprint": "f" * 64})
    assert ok.vocabulary == tuple(NAMES5)

    with pytest.raises(ValueError) as e:
        PseudoLabelStore.open(tmp_path / "s", expect={"fingerprint": "0" * 64})
    assert f"fingerprint: store has '{'f' * 64}', expected '{'0' * 64}'" in str(e.value)

    other = ["cat", "wolf", "grass", "sky", "road"]
    with pytest.raises(ValueError, match=r"vocabulary\[1\]: store has 'dog', expected 'wolf'"):
        PseudoLabelStore.open(tmp_path / "s", expect={"vocabulary": other})
    with pytest.raises(ValueError, match=r"vocabulary: store has 5 items .* expected 2 items"):
        PseudoLabelStore.open(tmp_path / "s", expect={"vocabulary": ("cat", "dog")})

    with pytest.raises(FileNotFoundError, match="manifest.json does not exist"):
        PseudoLabelStore.open(tmp_path / "nothing")
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        PseudoLabelStore.open(tmp_path / "s")


def test_read_of_a_missing_image_names_it_and_the_command(tmp_path):
    store = make_store(tmp_path / "s", command="python tools/generate_pseudo_labels.py --x")
    with pytest.raises(FileNotFoundError, match="image_id 'nope'.*--x"):
        store.read("nope")


def test_label_map_to_another_vocabulary(tmp_path):
    store = make_store(tmp_path / "s")
    table = store.label_map_to(["Sky", "cat", "tree"], ignore_label=255)
    assert table.shape == (256,)
    np.testing.assert_array_equal(table[[0, 1, 2, 3, 4, 255]], [1, 255, 255, 0, 255, 255])
