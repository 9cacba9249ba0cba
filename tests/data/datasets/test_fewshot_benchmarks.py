"""PASCAL-5i / COCO-20i: HSNet's fold lists converted, fold classes, training pairs and the
deterministic test episodes, on tiny fixtures in the official layouts."""

import pickle

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data.datasets.common import datasets_root
from ovseg.data.datasets.fewshot import (
    coco_test_episodes,
    fold_class_ids,
    register_fewshot_benchmark,
)
from ovseg.data.datasets.fewshot_splits import (
    load_coco_classwise,
    read_hsnet_coco_pickle,
    read_hsnet_pascal_list,
)


def test_fold_classes_follow_hsnet_rules():
    assert fold_class_ids(20, 1, "block") == [5, 6, 7, 8, 9]
    assert fold_class_ids(80, 2, "interleaved")[:4] == [2, 6, 10, 14]
    assert len(fold_class_ids(80, 3, "interleaved")) == 20
    every = sorted(c for f in range(4) for c in fold_class_ids(80, f, "interleaved"))
    assert every == list(range(80))
    with pytest.raises(ValueError, match="fold must be"):
        fold_class_ids(20, 4, "block")


def _hsnet_splits(tmp_path, raw):
    """HSNet's data/splits in miniature: PASCAL txt lists and COCO pickles, folds 0..3."""
    splits = tmp_path / "hsnet" / "data" / "splits"
    for fold in range(4):
        cls = 5 * fold + 1  # 1-based, first class of the fold
        raw.lines(
            splits / "pascal/trn" / f"fold{fold}.txt",
            [f"t{fold}a__{cls:02d}", f"t{fold}b__{cls + 1:02d}"],
        )
        raw.lines(
            splits / "pascal/val" / f"fold{fold}.txt",
            [f"v{fold}a__{cls:02d}", f"v{fold}b__{cls + 4:02d}", f"v{fold}c__{cls:02d}"],
        )
        novel = fold_class_ids(80, fold, "interleaved")
        trn = {
            c: ([] if c in novel else [f"train2014/t{c}_{i}.jpg" for i in range(c % 3)])
            for c in range(80)
        }
        val = {
            c: ([f"val2014/v{c}_{i}.jpg" for i in range(1 + c % 4)] if c in novel else [])
            for c in range(80)
        }
        for split, data in (("trn", trn), ("val", val)):
            path = splits / "coco" / split / f"fold{fold}.pkl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pickle.dumps(data, protocol=2))
    return splits


def _register(root):
    for benchmark, vocab, rule, boundary in (
        ("pascal5i", "voc20", "block", True),
        ("coco20i", "coco80", "interleaved", False),
    ):
        register_fewshot_benchmark(
            benchmark, str(root), vocabulary_name=vocab, rule=rule, test_ignores_boundary=boundary
        )


@pytest.fixture
def converted(tmp_path, raw, prepare_script):
    splits = _hsnet_splits(tmp_path, raw)
    root = tmp_path / "datasets"
    report = prepare_script("prepare_fewshot_splits").convert(splits, root)
    assert report["pascal5i"] == (4 * 2 + 4 * 3, 4 * 2 + 4 * 3)  # every image missing here
    _register(root)
    yield root
    _register(datasets_root())


def test_pascal_training_pairs_are_the_other_folds_in_order(converted):
    dicts = DatasetCatalog.get("pascal5i_fold1_train")
    assert [(d["image_id"], d["episode_class"]) for d in dicts] == [
        ("t0a", 0),
        ("t0b", 1),
        ("t2a", 10),
        ("t2b", 11),
        ("t3a", 15),
        ("t3b", 16),
    ]
    assert dicts[0]["sem_seg_file_name"].endswith("VOCdevkit/VOC2012/SegmentationClassAug/t0a.png")
    meta = MetadataCatalog.get("pascal5i_fold1_train")
    assert meta.unseen_classes == ["bus", "car", "cat", "chair", "cow"]
    assert "bus" not in meta.seen_classes and len(meta.seen_classes) == 15
    assert meta.evaluator_type == "fewshot_binary" and meta.test_ignores_boundary


def test_pascal_test_episodes_wrap_around_the_val_list(converted):
    dicts = DatasetCatalog.get("pascal5i_fold2_test")
    assert len(dicts) == 1000
    got = [(d["image_id"], d["episode_class"]) for d in dicts[:4]]
    assert got == [("v2a", 10), ("v2b", 14), ("v2c", 10), ("v2a", 10)]
    assert dicts[999]["image_id"] == "v2a" and dicts[999]["episode"] == 999  # 999 % 3 == 0


def test_coco_test_episodes_replay_hsnet_draws(converted):
    dicts = DatasetCatalog.get("coco20i_fold3_test")
    classwise = load_coco_classwise(converted, "val", 3)
    novel = fold_class_ids(80, 3, "interleaved")
    # HSNet's test: fix_randseed(0), then per episode two np.random.choice calls
    np.random.seed(0)
    want = []
    for _ in range(1000):
        c = np.random.choice(novel, 1, replace=False)[0]
        want.append((np.random.choice(classwise[c], 1, replace=False)[0], c))
    got = [(d["file_name"].split("COCO2014/")[1], d["episode_class"]) for d in dicts]
    assert got == [(str(n), int(c)) for n, c in want]
    assert got == [(n, c) for n, c in coco_test_episodes(classwise, novel)]
    assert len({c for _, c in got}) == 20  # every novel class drawn
    assert dicts[0]["sem_seg_file_name"].endswith(
        "COCO2014/annotations/" + got[0][0].replace(".jpg", ".png")
    )


def test_coco_training_pairs_and_sampling(converted):
    dicts = DatasetCatalog.get("coco20i_fold0_train")
    classes = {d["episode_class"] for d in dicts}
    assert classes and not classes & set(fold_class_ids(80, 0, "interleaved"))
    assert MetadataCatalog.get("coco20i_fold0_train").train_sampling == "class_uniform"


def test_missing_fold_lists_name_the_script(tmp_path):
    _register(tmp_path)
    try:
        with pytest.raises(FileNotFoundError, match="prepare_fewshot_splits.py"):
            DatasetCatalog.get("pascal5i_fold0_test")
    finally:
        _register(datasets_root())


class _Evil:
    def __reduce__(self):
        return (print, ("ran",))


def test_coco_pickles_load_no_object(tmp_path):
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({0: ["a.jpg", "b.jpg"], 4: []}))
    assert read_hsnet_coco_pickle(good) == {0: ["a.jpg", "b.jpg"], 4: []}
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({0: [_Evil()]}))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        read_hsnet_coco_pickle(evil)
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps({"person": ["a.jpg"]}))
    with pytest.raises(ValueError, match="not a COCO-20i class id"):
        read_hsnet_coco_pickle(wrong)


def test_pascal_list_errors_name_the_line(tmp_path, raw):
    path = raw.lines(tmp_path / "fold0.txt", ["2007_000033__01", "2007_000061"])
    with pytest.raises(ValueError, match="fold0.txt:2"):
        read_hsnet_pascal_list(path)
    path = raw.lines(tmp_path / "fold1.txt", ["2007_000033__21"])
    with pytest.raises(ValueError, match="outside 1..20"):
        read_hsnet_pascal_list(path)


def test_a_missing_hsnet_folder_points_at_its_option(tmp_path, prepare_script):
    script = prepare_script("prepare_fewshot_splits")
    with pytest.raises(FileNotFoundError, match=r"not found: .*hsnet.*\(or pass --hsnet-splits\)"):
        script.main(["--hsnet-splits", str(tmp_path / "hsnet"), "--root", str(tmp_path)])
    (tmp_path / "hsnet/pascal/trn").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"fold0.txt. .*\(or pass --hsnet-splits\)"):
        script.convert(tmp_path / "hsnet", tmp_path, ["pascal5i"])
