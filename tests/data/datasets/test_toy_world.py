"""The offline world: determinism, label/caption agreement, registration, caching."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ovseg_testing.scripts import subprocess_env
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data.datasets import toy_world as tw
from ovseg.data.datasets.common import datasets_root
from ovseg.vocab import Vocabulary


def _files(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _shape_words(caption: str) -> set:
    return {w for w in re.findall(r"[a-z]+", caption) if w in tw.SHAPES}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return tw.build_toy_world(str(root), num_train=6, num_val=3, seed=0)


@pytest.fixture
def registered(world):
    tw.register_all_toy_world(str(world.parent))
    yield world
    tw.register_all_toy_world(datasets_root())  # back to what import registered


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = tw.build_toy_world(str(tmp_path / "a"), num_train=6, num_val=3, seed=0)
    other = tw.build_toy_world(str(tmp_path / "b"), num_train=6, num_val=3, seed=1)
    files = _files(world)
    semantic = [k for k in files if not k.startswith("panoptic/")]
    assert len(semantic) == 6 + 6 + 3 + 3 + 2 + 1
    # panoptic/: a PNG per image, panoptic + instance + caption jsons per split, a manifest
    assert len(files) - len(semantic) == 6 + 3 + 3 * 2 + 1
    assert _files(again) == files
    other_files = _files(other)
    assert other_files.keys() == files.keys()
    image = "images/training/toy_train_000000.png"
    assert other_files[image] != files[image]


def test_files_are_the_pure_generator_and_a_bigger_world_extends_a_smaller(world, tmp_path):
    image, label, captions, _ = tw.generate_sample(0, "validation", 2)
    stem = "toy_val_000002"
    assert np.array_equal(np.asarray(Image.open(world / f"images/validation/{stem}.png")), image)
    saved = np.asarray(Image.open(world / f"annotations_detectron2/validation/{stem}.png"))
    assert saved.dtype == np.uint8 and np.array_equal(saved, label)
    assert json.loads((world / "captions_validation.json").read_text())[stem] == captions
    bigger = tw.build_toy_world(str(tmp_path), num_train=8, num_val=3, seed=0)
    stem = "toy_train_000005.png"
    assert (bigger / "images/training" / stem).read_bytes() == (
        world / "images/training" / stem
    ).read_bytes()


def test_every_labelled_shape_is_captioned_and_vice_versa(world):
    for split, n in (("training", 6), ("validation", 3)):
        captions = json.loads((world / f"captions_{split}.json").read_text())
        assert len(captions) == n
        for stem, caps in captions.items():
            label = np.asarray(Image.open(world / f"annotations_detectron2/{split}/{stem}.png"))
            image = np.asarray(Image.open(world / f"images/{split}/{stem}.png"))
            assert image.shape == (64, 64, 3) and label.shape == (64, 64)
            present = {tw.CLASSES[v] for v in np.unique(label) if v != 0}
            assert 1 <= len(present) <= 3
            assert len(caps) == 3
            for cap in caps:
                assert _shape_words(cap) == present, (stem, cap, present)


def test_many_samples_agree_and_cover_every_shape_colour_texture():
    shapes, colors, textures, counts, with_color = set(), set(), set(), set(), 0
    for i in range(120):
        _, label, caps, scene = tw.generate_sample(5, "pretrain", i, num_captions=2)
        present = {tw.CLASSES[v] for v in np.unique(label) if v != 0}
        assert present == {o.shape for o in scene.objects}  # no object fully hidden
        assert all(_shape_words(c) == present for c in caps)
        with_color += sum(any(c in cap.split() for c in tw.COLORS) for cap in caps)
        shapes |= present
        colors |= {o.color for o in scene.objects}
        textures.add(scene.texture)
        counts.add(len(scene.objects))
    assert shapes == set(tw.SHAPES) and colors == set(tw.COLORS)
    assert textures == set(tw.TEXTURES) and counts == {1, 2, 3}
    assert 0.35 < with_color / 240 < 0.65  # colour words dropped about half the time


def test_rendered_circle_matches_hand_computation():
    obj = tw.ToyObject("circle", "red", center=(32.0, 20.0), radius=10.0, angle=0.0)
    scene = tw.ToyScene(64, "plain", ((100, 100, 100), (0, 0, 0)), 6, 0, (obj,), noise_seed=0)
    image, label = tw.render_scene(scene)
    # pixel centres (y + .5, x + .5) within 10 px of (32, 20): per column offset u = .5 .. 9.5
    # 2 * round(sqrt(100 - u^2)) of them = 20+20+20+18+18+16+16+14+10+6, twice: 316
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    expected = (yy - 32) ** 2 + (xx - 20) ** 2 <= 100
    assert expected.sum() == 316
    assert np.array_equal(label == 1, expected) and set(np.unique(label)) == {0, 1}
    assert np.abs(image[expected].astype(int) - (215, 35, 35)).mean() < 5  # noise std 4
    assert np.abs(image[~expected].astype(int) - 100).mean() < 5


def test_twin_keeps_layout_and_colours_and_changes_every_shape():
    rng = tw.sample_rng(0, "pretrain", 7)
    scene = tw.sample_scene(rng)
    twin = tw.twin_scene(scene, rng)
    assert (twin.texture, twin.tones, twin.noise_seed) == (
        scene.texture,
        scene.tones,
        scene.noise_seed,
    )
    for a, b in zip(scene.objects, twin.objects):
        assert (a.center, a.radius, a.color) == (b.center, b.radius, b.color)
        assert a.shape != b.shape


def test_registered_splits_metadata_and_dicts(registered):
    vocab = Vocabulary.builtin("toy9")
    assert vocab.names == tw.CLASSES and vocab.unseen == ("triangle", "ring")
    for prefix, unseen in (("toy_world", ["triangle", "ring"]), ("toy_world_b", ["star", "cross"])):
        for split, folder, n in (("train", "training", 6), ("val", "validation", 3)):
            name = f"{prefix}_sem_seg_{split}"
            meta = MetadataCatalog.get(name)
            assert meta.stuff_classes == list(tw.CLASSES) and len(meta.stuff_colors) == 9
            assert meta.unseen_classes == unseen
            assert meta.seen_classes == [c for c in tw.CLASSES if c not in unseen]
            assert meta.ignore_label == 255 and meta.evaluator_type == "ovseg_sem_seg"
            assert meta.vocabulary_name == "toy9"
            assert meta.captions == str(registered / f"captions_{folder}.json")
            dicts = DatasetCatalog.get(name)
            assert len(dicts) == n
            assert dicts[0]["file_name"] == str(
                registered / f"images/{folder}/{dicts[0]['image_id']}.png"
            )
            assert os.path.isfile(dicts[-1]["sem_seg_file_name"])


def test_missing_world_names_the_command(tmp_path):
    tw.register_all_toy_world(str(tmp_path))
    try:
        with pytest.raises(FileNotFoundError, match="python -m ovseg.data.datasets.toy_world"):
            DatasetCatalog.get("toy_world_sem_seg_train")
    finally:
        tw.register_all_toy_world(datasets_root())


def test_incomplete_world_names_the_missing_file(tmp_path):
    folder = tw.build_toy_world(str(tmp_path), num_train=2, num_val=1, seed=0)
    gone = folder / "annotations_detectron2/training/toy_train_000001.png"
    gone.unlink()
    tw.register_all_toy_world(str(tmp_path))
    try:
        with pytest.raises(FileNotFoundError, match="toy_train_000001.png.*--overwrite"):
            DatasetCatalog.get("toy_world_sem_seg_train")
        assert len(DatasetCatalog.get("toy_world_sem_seg_val")) == 1
    finally:
        tw.register_all_toy_world(datasets_root())


def test_cache_reuse_refusal_and_overwrite(tmp_path, monkeypatch):
    folder = tw.build_toy_world(str(tmp_path), num_train=2, num_val=1, seed=0)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == {
        "generator_version": tw.GENERATOR_VERSION,
        "seed": 0,
        "size": 64,
        "num_train": 2,
        "num_val": 1,
    }
    calls = []
    monkeypatch.setattr(tw, "_write_world", lambda *a: calls.append(a))
    assert tw.build_toy_world(str(tmp_path), num_train=2, num_val=1, seed=0) == folder
    assert calls == []  # reused, nothing written
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="--overwrite"):
        tw.build_toy_world(str(tmp_path), num_train=2, num_val=1, seed=1)
    assert json.loads((folder / "manifest.json").read_text())["seed"] == 0  # untouched
    tw.build_toy_world(str(tmp_path), num_train=2, num_val=1, seed=1, overwrite=True)
    assert json.loads((folder / "manifest.json").read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["toy_world"]  # no temporary folders left


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def explode(folder, params):
        (folder / "half").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tw, "_write_world", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        tw.build_toy_world(str(tmp_path), num_train=2, num_val=1)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="num_train=0"):
        tw.build_toy_world(str(tmp_path), num_train=0, num_val=1)
    with pytest.raises(ValueError, match="hexagon"):
        tw.register_toy_world(str(tmp_path), "toy_world_x", unseen=["hexagon"])
    with pytest.raises(ValueError, match="stream"):
        tw.generate_sample(0, "test", 0)


def test_cli_writes_the_world(tmp_path, capsys):
    tw.main(["--root", str(tmp_path), "--num-train", "2", "--num-val", "1", "--seed", "3"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "toy_world")
    assert json.loads((tmp_path / "toy_world/manifest.json").read_text())["seed"] == 3


def test_module_command_runs_without_a_runpy_warning(tmp_path):
    # the README's first toy command: importing the dataset package registers the world
    # without importing the module that `-m` runs, which runpy would warn about
    proc = subprocess.run(
        [sys.executable, "-m", "ovseg.data.datasets.toy_world", "--root", str(tmp_path),
         "--num-train", "1", "--num-val", "1"],
        env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "sys.modules" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "toy_world")
