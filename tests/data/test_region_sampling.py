"""FreeSeg's prompt-stage data: one record per (task, region), at most N per class and task,
on the tiny COCO-layout panoptic set and a semantic label PNG; records mapped and fed to the
prompt learner train on their own region only."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from ovseg_testing import tiny_freeseg_prompt_cfg
from ovseg_testing.panoptic import PANOPTIC, registered_tiny_panoptic
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import ovseg  # noqa: F401  (registers the meta-architectures)
from ovseg.data import build_dataset_mapper
from ovseg.data.label_counts import load_label_counts, write_label_counts
from ovseg.data.region_sampling import image_regions, region_dataset_for, sample_regions

CLASSES = ["cat", "dog", "sky"]


@pytest.fixture(scope="module")
def tiny_panoptic(tmp_path_factory):
    with registered_tiny_panoptic(tmp_path_factory.mktemp("pan")) as root:
        yield root


def _summary(records):
    return sorted(
        (r["task"], r["region_class"], tuple(s["id"] for s in r.get("segments_info", ())))
        for r in records
    )


def test_panoptic_image_gives_regions_per_task(tiny_panoptic):
    (record,) = DatasetCatalog.get(PANOPTIC)
    regions = image_regions(record, ("semantic", "instance", "panoptic"), CLASSES)
    # the crowd of cats (1002) is never a region; sky is no instance
    assert _summary(regions) == [
        ("ins_seg", "cat", (1001,)),
        ("ins_seg", "dog", (2001,)),
        ("pan_seg", "cat", (1001,)),
        ("pan_seg", "dog", (2001,)),
        ("pan_seg", "sky", (5000,)),
        ("sem_seg", "cat", (1001,)),
        ("sem_seg", "dog", (2001,)),
        ("sem_seg", "sky", (5000,)),
    ]
    seen_only = image_regions(record, ("semantic",), CLASSES, keep=lambda n: n != "dog")
    assert _summary(seen_only) == [("sem_seg", "cat", (1001,)), ("sem_seg", "sky", (5000,))]


def test_semantic_image_gives_one_region_per_class_present(tmp_path):
    label = tmp_path / "a.png"
    Image.fromarray(np.array([[0, 2, 255], [2, 2, 255]], dtype=np.uint8)).save(label)
    record = {"file_name": "a.jpg", "sem_seg_file_name": str(label)}
    regions = image_regions(record, ("semantic", "instance"), CLASSES)
    assert [(r["task"], r["region_class"]) for r in regions] == [
        ("sem_seg", "cat"),
        ("sem_seg", "sky"),
    ]


def test_semantic_regions_from_the_label_map(tiny_panoptic, tmp_path):
    # the release's semantic regions are its label PNG's classes, not the segments' unions:
    # here the label map holds dog and sky only (the crowd's and the cat's pixels unlabelled)
    (record,) = DatasetCatalog.get(PANOPTIC)
    label = tmp_path / "l.png"
    with Image.open(record["file_name"]) as image:
        grid = np.full(image.size[::-1], 2, dtype=np.uint8)
    grid[:3], grid[3, :5] = 1, 255
    Image.fromarray(grid).save(label)
    record = {**record, "sem_seg_file_name": str(label), "annotations": []}
    regions = image_regions(record, ("semantic", "panoptic"), CLASSES, labels=True)
    assert _summary(regions) == [
        ("pan_seg", "cat", (1001,)),
        ("pan_seg", "dog", (2001,)),
        ("pan_seg", "sky", (5000,)),
        ("sem_seg", "dog", ()),
        ("sem_seg", "sky", ()),
    ]
    semantic = [r for r in regions if r["task"] == "sem_seg"]
    # no segment keys left: the region mapper crops the label map's class
    assert not any(
        {"segments_info", "pan_seg_file_name", "annotations"} & r.keys() for r in semantic
    )
    assert all(r["sem_seg_file_name"] == str(label) for r in semantic)
    mapper = build_dataset_mapper(_cfg(tmp_path), False, PANOPTIC)
    assert _region(mapper(dict(semantic[0]))) == ("dog", int((grid == 1).sum()))


def test_label_counts_file_replaces_reading_the_pngs(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    Image.fromarray(np.array([[0, 2, 255], [2, 2, 255]], dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((2, 3), 1, dtype=np.uint8)).save(folder / "b.png")
    assert load_label_counts(folder) is None  # not written yet
    path = write_label_counts(folder)
    assert path == tmp_path / "labels_label_count.json"  # FreeSeg's name, beside the folder
    counts = load_label_counts(folder)
    assert counts == {"a.png": [0, 2], "b.png": [1]}
    # the regions follow the file (here edited), a name missing from it is read from its PNG
    record = {"file_name": "a.jpg", "sem_seg_file_name": str(folder / "a.png")}
    regions = image_regions(record, ("semantic",), CLASSES, label_counts={"a.png": [1]})
    assert [r["region_class"] for r in regions] == ["dog"]
    regions = image_regions(record, ("semantic",), CLASSES, label_counts={"b.png": [1]})
    assert [r["region_class"] for r in regions] == ["cat", "sky"]
    # a file older than its folder (a label added since) is not used
    old = folder.stat().st_mtime - 10
    os.utime(path, (old, old))
    assert load_label_counts(folder) is None


def _records(task, cls, n):
    return [{"task": task, "region_class": cls, "i": i} for i in range(n)]


def test_at_most_n_per_class_and_task_distinct_unless_official():
    regions = (
        _records("sem_seg", "a", 50) + _records("sem_seg", "b", 3) + _records("pan_seg", "a", 7)
    )
    out = sample_regions(regions, 5, seed=0)
    counts = {}
    for r in out:
        counts.setdefault((r["task"], r["region_class"]), []).append(r["i"])
    assert {k: len(v) for k, v in counts.items()} == {
        ("sem_seg", "a"): 5,
        ("sem_seg", "b"): 3,
        ("pan_seg", "a"): 5,
    }
    assert all(len(set(v)) == len(v) for v in counts.values())
    assert out == sample_regions(regions, 5, seed=0)  # seeded
    assert out != sample_regions(regions, 5, seed=1)
    # official: with replacement, so 50 draws of 50 repeat some records
    drawn = [r["i"] for r in sample_regions(regions[:50], 50, replace=True)]
    assert len(drawn) == 50 and len(set(drawn)) < 50
    assert sorted(r["i"] for r in sample_regions(regions[:50], 50)) == list(range(50))
    with pytest.raises(ValueError, match="positive"):
        sample_regions(regions, 0)


def _cfg(tmp_path, *opts):
    return tiny_freeseg_prompt_cfg(
        tmp_path / "cache",
        "DATASETS.TRAIN", f"('{PANOPTIC}',)",
        "INPUT.DATASET_MAPPER_NAME", "ovseg_region",
        "MODEL.FREESEG.PROMPT_TRAIN_SIZE", "(16, 16)",
        "MODEL.FREESEG.PROMPT_TEST_SIZE", "16",
        *opts,
    )  # fmt: skip


def _region(x):
    """(class name, mask pixel count) of a mapped region input."""
    inst = x["instances"]
    assert inst.gt_masks.shape[0] == 1 == len(inst.gt_classes)
    return x["vocabulary"][int(inst.gt_classes[0])], int(inst.gt_masks.sum())


def test_region_dataset_maps_to_its_region_and_trains(tiny_panoptic, tmp_path):
    cfg = _cfg(tmp_path)
    assert len(region_dataset_for(cfg)) == 8  # -1: every region record
    cfg = _cfg(tmp_path, "MODEL.FREESEG.PROMPT_SAMPLES_PER_CLASS", "1")
    records = region_dataset_for(cfg)
    assert len(records) == 8
    mapper = build_dataset_mapper(cfg, False, PANOPTIC)  # no random crop: the whole box
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    by_task = {}
    area = {"cat": 12, "dog": 12, "sky": 32}  # the crowd of cats is never a target
    for r in records:
        x = mapper(dict(r))
        assert x["image"].shape == (3, 16, 16)
        assert _region(x) == (r["region_class"], area[r["region_class"]])
        by_task.setdefault(x["task"], []).append(x)
    # a mixed-task batch: each region scored with its own task's prompt
    batch = [by_task["sem_seg"][0], by_task["ins_seg"][0]]
    both = model(batch)["loss_prompt_cls"]
    parts = [model([x])["loss_prompt_cls"] for x in batch]
    torch.testing.assert_close(both, (parts[0] + parts[1]) / 2)
    model.one_task_per_batch = True  # official: the first input's task for all
    first = model(batch)["loss_prompt_cls"]
    as_sem = dict(batch[1], task="sem_seg")
    torch.testing.assert_close(first, model([batch[0], as_sem])["loss_prompt_cls"])
    assert not torch.isclose(first, both)


def test_region_sampling_refuses_the_main_stage(tiny_panoptic, tmp_path):
    cfg = _cfg(tmp_path, "MODEL.FREESEG.PROMPT_SAMPLES_PER_CLASS", "4")
    cfg.MODEL.META_ARCHITECTURE = "FreeSeg"
    with pytest.raises(ValueError, match="prompt stage"):
        region_dataset_for(cfg)


def test_semantic_records_map_to_their_class_alone(small_ade20k, tmp_path):
    cfg = tiny_freeseg_prompt_cfg(
        tmp_path / "cache",
        "DATASETS.TRAIN", "('ade20k_sem_seg_train',)",
        "INPUT.DATASET_MAPPER_NAME", "ovseg_region",
        "MODEL.FREESEG.PROMPT_SAMPLES_PER_CLASS", "1",
        "MODEL.FREESEG.PROMPT_TEST_SIZE", "512",
    )  # fmt: skip
    records = region_dataset_for(cfg)
    assert records and {r["task"] for r in records} == {"sem_seg"}
    per_class = {}
    for r in records:
        per_class[r["region_class"]] = per_class.get(r["region_class"], 0) + 1
    assert set(per_class.values()) == {1}  # one record per class
    mapper = build_dataset_mapper(cfg, False, "ade20k_sem_seg_train")
    classes = list(mapper.class_names)
    for r in records:
        x = mapper(dict(r))
        label = np.asarray(Image.open(r["sem_seg_file_name"]))
        want = int((label == classes.index(r["region_class"])).sum())
        assert _region(x) == (r["region_class"], want)  # the class's pixels, all of them


def test_a_semantic_record_unions_its_class_segments(tiny_panoptic, tmp_path):
    (record,) = DatasetCatalog.get(PANOPTIC)
    segs = {s["id"]: s for s in record["segments_info"]}
    cat = segs[1001]["category_id"]
    mapper = build_dataset_mapper(_cfg(tmp_path), False, PANOPTIC)
    # the dog's segment relabelled cat: a sem_seg record of cat holds both segments
    both = [segs[1001], {**segs[2001], "category_id": cat}]
    x = mapper({**record, "segments_info": both, "task": "sem_seg", "region_class": "cat"})
    assert _region(x) == ("cat", 24)
    x = mapper({**record, "segments_info": [segs[1001]], "task": "pan_seg", "region_class": "cat"})
    assert _region(x) == ("cat", 12)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        mapper({**record, "region_class": "horse", "task": "pan_seg"})
    with pytest.raises(ValueError, match="not a region record"):
        mapper(dict(record))
