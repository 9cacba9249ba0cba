"""The offline world's instances: panoptic PNG + json and COCO instance json per split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from ovseg_testing import registered_toy_world
from PIL import Image
from pycocotools import mask as mask_util

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data.datasets.toy_world import CLASSES, SHAPES, SPLITS, build_toy_world, generate_sample
from ovseg.data.datasets.toy_world_instances import PANOPTIC_DIR
from ovseg.evaluation.panoptic_quality import rgb2id

# sha256 over (path, file sha256) of every file of build_toy_world(num_train=6, num_val=4,
# seed=0) outside panoptic/, recorded with the writer as it was before instances existed:
# the semantic world (images, labels, captions, manifest) must stay byte-identical. (The PNG
# bytes depend on Pillow's encoder; a Pillow upgrade that changes them shows here too.)
SEMANTIC_DIGEST = "3d6b7d5e9641369f220c97dfc555e9e0cf73406b7150108725b684ad1ade862f"


def _semantic_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not rel.startswith(PANOPTIC_DIR + "/"):
            h.update(rel.encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return build_toy_world(str(root), num_train=6, num_val=4, seed=0)


def test_semantic_files_are_byte_identical(world):
    assert (world / PANOPTIC_DIR / "manifest.json").is_file()
    assert _semantic_digest(world) == SEMANTIC_DIGEST


def test_segments_and_instances_agree_with_the_semantic_labels(world):
    pan = json.loads((world / PANOPTIC_DIR / "panoptic_validation.json").read_text())
    ins = json.loads((world / PANOPTIC_DIR / "instances_validation.json").read_text())
    assert [c["name"] for c in pan["categories"]] == list(CLASSES)
    assert [c["name"] for c in ins["categories"]] == list(SHAPES)
    assert len(pan["annotations"]) == 4
    for ann in pan["annotations"]:
        i = ann["image_id"]
        _, label, _, scene = generate_sample(0, "validation", i)
        ids = rgb2id(np.asarray(Image.open(world / PANOPTIC_DIR / "validation" / ann["file_name"])))
        segs = ann["segments_info"]
        assert len({s["id"] for s in segs}) == len(segs) == 1 + len(scene.objects)
        # every pixel lies in one segment whose category is its semantic class (ids from 1)
        semantic = np.full(label.shape, -1)
        for s in segs:
            mask = ids == s["id"]
            assert mask.sum() == s["area"] > 0
            semantic[mask] = s["category_id"] - 1
        assert (semantic == label).all()
        # the instance json holds the same things, one per object, as RLE
        things = [s for s in segs if s["category_id"] > 1]
        objs = [a for a in ins["annotations"] if a["image_id"] == i]
        assert sorted(a["category_id"] for a in objs) == sorted(s["category_id"] for s in things)
        for a in objs:
            rle = {**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}
            mask = mask_util.decode(rle).astype(bool)
            assert any((mask == (ids == s["id"])).all() for s in things)


def test_the_panoptic_files_are_cached_and_rebuilt_when_missing(world):
    folder = world / PANOPTIC_DIR
    stamp = (folder / "panoptic_training.json").stat().st_mtime_ns
    build_toy_world(str(world.parent), num_train=6, num_val=4, seed=0)
    assert (folder / "panoptic_training.json").stat().st_mtime_ns == stamp  # reused
    (folder / "manifest.json").unlink()
    build_toy_world(str(world.parent), num_train=6, num_val=4, seed=0)
    assert (folder / "manifest.json").is_file()
    assert _semantic_digest(world) == SEMANTIC_DIGEST


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_registered_with_the_splits_unseen_shapes(tmp_path, split):
    prefix = "toy_world" if split == "a" else f"toy_world_{split}"
    with registered_toy_world(tmp_path, num_train=3, num_val=2):
        pan = MetadataCatalog.get(f"{prefix}_panoptic_val")
        ins = MetadataCatalog.get(f"{prefix}_instance_train")
        assert pan.evaluator_type == "ovseg_panoptic" and ins.evaluator_type == "ovseg_instance"
        assert pan.stuff_classes == list(CLASSES) and pan.thing_classes == list(SHAPES)
        assert ins.stuff_classes == list(SHAPES)
        for meta in (pan, ins):
            assert meta.unseen_classes == [c for c in SHAPES if c in SPLITS[split]]
        dicts = DatasetCatalog.get(f"{prefix}_panoptic_val")
        assert len(dicts) == 2 and Path(dicts[0]["sem_seg_file_name"]).is_file()
        records = DatasetCatalog.get(f"{prefix}_instance_train")
        assert len(records) == 3 and records[0]["captions"] and records[0]["annotations"]


def test_missing_instances_name_the_command(tmp_path):
    with registered_toy_world(tmp_path, num_train=3, num_val=2):
        (tmp_path / "toy_world" / PANOPTIC_DIR / "manifest.json").unlink()
        with pytest.raises(FileNotFoundError, match="python -m ovseg.data.datasets.toy_world"):
            DatasetCatalog.get("toy_world_instance_val")
