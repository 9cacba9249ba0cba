"""The builtin vocabulary JSONs: sizes, zero-shot splits and agreement with the label maps."""

import json

import pytest

from ovseg.data.datasets.common import VOCABULARY_DIR

EXPECTED = {  # name: (number of classes, number of unseen classes)
    "ade150": (150, 15),
    "ade847": (847, 0),
    "coco171": (171, 15),
    "voc20": (20, 5),
    "voc21": (21, 5),
    "pc59": (59, 10),
    "pc459": (459, 0),
    "fss1000": (1000, 240),  # the unseen: HSNet's test classes
}


def _vocab(name):
    with open(VOCABULARY_DIR / f"{name}.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schema_sizes_and_unique_clean_names(name):
    data = _vocab(name)
    assert set(data) == {"name", "classes", "unseen"}
    assert data["name"] == name
    num_classes, num_unseen = EXPECTED[name]
    assert len(data["classes"]) == num_classes
    assert len(data["unseen"]) == num_unseen
    assert len(set(data["classes"])) == num_classes
    assert all(c and c == c.strip() for c in data["classes"])
    assert set(data["unseen"]) <= set(data["classes"])


def _unseen_indices(name):
    data = _vocab(name)
    return [data["classes"].index(c) for c in data["unseen"]]


def test_zero_shot_splits_match_methods_md():
    assert _unseen_indices("coco171") == [19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136,
                                          137, 157, 160]  # fmt: skip
    assert _vocab("coco171")["unseen"][-1] == "wall-concrete"
    assert _unseen_indices("voc20") == [15, 16, 17, 18, 19]
    assert _vocab("voc20")["unseen"] == ["potted plant", "sheep", "sofa", "train", "tv monitor"]
    assert set(_vocab("pc59")["unseen"]) == {
        "cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tv monitor", "keyboard",
        "aeroplane",
    }  # fmt: skip
    # FreeSeg's ADE20K NOVEL_ID (datasets/prepare_ade20k_sem_seg_novel.py)
    assert _unseen_indices("ade150") == [9, 15, 30, 37, 49, 60, 74, 81, 89, 99, 112, 128, 136,
                                         143, 149]  # fmt: skip


def test_spot_checked_class_ids():
    assert _vocab("ade150")["classes"][8] == "window"  # detectron2's list has "window "
    assert _vocab("ade847")["classes"][0] == "wall"
    assert _vocab("ade847")["classes"][846] == "adding machine, totalizer, totaliser"
    coco = _vocab("coco171")["classes"]
    assert (coco[0], coco[11], coco[80], coco[170]) == ("person", "stop sign", "banner", "wood")
    assert _vocab("pc459")["classes"][:3] == ["accordion", "aeroplane", "air conditioner"]


def test_pc59_ids_name_the_same_classes_in_pc459(prepare_script):
    pc59 = _vocab("pc59")["classes"]
    pc459 = _vocab("pc459")["classes"]
    ids = prepare_script("prepare_pcontext_sem_seg").PCONTEXT59_IDS
    assert len(ids) == 59 and list(ids) == sorted(ids)
    renamed = {"dining table": "table"}  # PASCAL Context calls VOC's dining table "table"
    assert [pc459[i - 1] for i in ids] == [renamed.get(n, n) for n in pc59]


def test_ade847_ids_are_unique_and_fit_the_encoding(prepare_script):
    ids = prepare_script("prepare_ade20k_full_sem_seg").ADE20K_FULL_IDS
    assert len(ids) == len(set(ids)) == 847
    assert ids[:3] == (2978, 312, 2420)  # wall, building, sky
    assert 0 < min(ids) and max(ids) < 26 * 256
