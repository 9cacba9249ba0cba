"""A label value outside [0, K) and not the ignore label is an error naming the file, in
every zero-shot setting, at training and at test."""

import numpy as np
import pytest
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from ovseg import add_ovseg_config
from ovseg.data import build_dataset_mapper

BAD_VALUE = 200  # ADE-150 has ids 0-149 and 255 = ignore


def _cfg(setting: str):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.DATASETS.TRAIN = ("ade20k_sem_seg_train",)
    cfg.DATASETS.TEST = ("ade20k_sem_seg_val",)
    cfg.MODEL.OVSEG.ZERO_SHOT_SETTING = setting
    cfg.INPUT.CROP.ENABLED = False
    return cfg


def _spoil_first_label(split: str) -> dict:
    d = DatasetCatalog.get(f"ade20k_sem_seg_{split}")[0]
    label = np.asarray(Image.open(d["sem_seg_file_name"])).copy()
    label[10:20, 10:20] = BAD_VALUE
    Image.fromarray(label).save(d["sem_seg_file_name"])
    return d


@pytest.mark.parametrize("setting", ["none", "inductive", "transductive"])
def test_out_of_range_training_label_names_the_file(ade20k_registered, setting):
    d = _spoil_first_label("train")
    mapper = build_dataset_mapper(_cfg(setting), True, "ade20k_sem_seg_train")
    with pytest.raises(ValueError, match=r"\[200\]") as info:
        mapper(dict(d))
    assert d["sem_seg_file_name"] in str(info.value)


def test_out_of_range_test_label_names_the_file(ade20k_registered):
    d = _spoil_first_label("val")
    mapper = build_dataset_mapper(_cfg("none"), False, "ade20k_sem_seg_val")
    with pytest.raises(ValueError, match="ade20k|ADE") as info:
        mapper(dict(d))
    assert d["sem_seg_file_name"] in str(info.value)


def test_in_range_labels_and_ignore_pass(ade20k_registered):
    d = DatasetCatalog.get("ade20k_sem_seg_train")[0]
    mapper = build_dataset_mapper(_cfg("inductive"), True, "ade20k_sem_seg_train")
    out = mapper(dict(d))
    assert set(np.unique(out["sem_seg"].numpy())) <= set(range(150)) | {255}
