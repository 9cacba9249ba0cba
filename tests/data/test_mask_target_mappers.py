"""Panoptic / instance / semantic-mask mappers: targets, crowd, unseen removal, padding."""

import numpy as np
import pytest
import torch
from ovseg_testing.panoptic import INSTANCE, PANOPTIC, registered_tiny_panoptic, segment_mask
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from ovseg.config import add_ovseg_config
from ovseg.data.dataset_mappers import build_dataset_mapper, semantic_mask_targets
from ovseg.data.dataset_mappers.mask_targets import target_classes
from ovseg.data.image_io import LabelSizeError


def _mapper(name, dataset, setting, divisibility=-1):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = name
    cfg.MODEL.OVSEG.ZERO_SHOT_SETTING = setting
    cfg.INPUT.MIN_SIZE_TRAIN = (8,)
    cfg.INPUT.MAX_SIZE_TRAIN = 8
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.SIZE_DIVISIBILITY = divisibility
    cfg.DATASETS.TRAIN = (dataset,)
    return build_dataset_mapper(cfg, is_train=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with registered_tiny_panoptic(tmp_path_factory.mktemp("pan")) as coco:
        yield coco


def _unflipped(out, key="masks"):
    """Masks (or the semantic label) in the original orientation (random flip, p = 1/2)."""
    flipped = any(type(t).__name__ == "HFlipTransform" for t in out["transforms"])
    value = out["instances"].gt_masks if key == "masks" else out[key]
    return value.flip(-1) if flipped else value


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("inductive", ["sky", "cat"]), ("none", ["sky", "cat", "dog"])],
)
def test_panoptic_targets_one_per_segment(tiny, setting, expected):
    mapper = _mapper("ovseg_panoptic", PANOPTIC, setting)
    out = mapper(DatasetCatalog.get(PANOPTIC)[0])
    # the crowd of cats (id 1002) is never a target; the unseen dog only without removal
    assert target_classes(out["instances"], out["vocabulary"]) == expected
    want = [segment_mask(i) for i in (5000, 1001, 2001)[: len(expected)]]
    np.testing.assert_array_equal(_unflipped(out).numpy(), np.stack(want))
    assert out["vocabulary"] == (
        ["cat", "sky"] if setting == "inductive" else ["cat", "dog", "sky"]
    )
    # the derived semantic label: dog pixels ignored when unseen, VOID ignored always
    sem = _unflipped(out, "sem_seg")
    assert int(sem[5, 3]) == 255
    assert int(sem[5, 5]) == (255 if setting == "inductive" else 1)


def test_instance_targets_one_per_thing(tiny):
    out = _mapper("ovseg_instance", INSTANCE, "inductive")(DatasetCatalog.get(INSTANCE)[0])
    assert target_classes(out["instances"], out["vocabulary"]) == ["cat"]
    np.testing.assert_array_equal(_unflipped(out)[0].numpy(), segment_mask(1001))
    out = _mapper("ovseg_instance", INSTANCE, "none")(DatasetCatalog.get(INSTANCE)[0])
    assert target_classes(out["instances"], out["vocabulary"]) == ["cat", "dog"]


def test_targets_are_padded_with_the_image(tiny):
    out = _mapper("ovseg_panoptic", PANOPTIC, "inductive", divisibility=32)(
        DatasetCatalog.get(PANOPTIC)[0]
    )
    assert out["image"].shape[-2:] == (32, 32)
    assert out["instances"].gt_masks.shape == (2, 32, 32)
    assert out["instances"].image_size == (32, 32)
    assert not out["instances"].gt_masks[:, 8:].any() and (out["sem_seg"][8:] == 255).all()


def test_semantic_mask_targets_one_per_class():
    sem = torch.tensor([[3, 3, 255], [0, 3, 0]])
    targets = semantic_mask_targets(sem, 255)
    assert targets.gt_classes.tolist() == [0, 3]
    assert targets.gt_masks.dtype == torch.bool
    np.testing.assert_array_equal(targets.gt_masks[1].numpy(), [[1, 1, 0], [0, 1, 0]])
    assert len(semantic_mask_targets(torch.full((2, 2), 255), 255)) == 0


def test_panoptic_mapper_refuses_a_semantic_dict(tiny):
    mapper = _mapper("ovseg_panoptic", PANOPTIC, "none")
    record = dict(DatasetCatalog.get(PANOPTIC)[0])
    record.pop("pan_seg_file_name")
    with pytest.raises(ValueError, match="no 'pan_seg_file_name'"):
        mapper(record)


def test_a_panoptic_label_of_another_size_says_both_sizes_and_what_to_do(tiny, tmp_path):
    # a plain ValueError ("is not the image's size") that train_net.py ended in a traceback
    mapper = _mapper("ovseg_panoptic", PANOPTIC, "none")
    record = dict(DatasetCatalog.get(PANOPTIC)[0])
    label = np.asarray(Image.open(record["pan_seg_file_name"]))
    wrong = tmp_path / "wrong.png"
    Image.fromarray(label[:-2]).save(wrong)
    record["pan_seg_file_name"] = str(wrong)
    with pytest.raises(LabelSizeError) as info:
        mapper(record)
    h, w = label.shape[:2]
    assert f"is {w}x{h - 2} (WxH) but its image is {w}x{h}" in str(info.value)
    assert "convert the label again" in str(info.value)


def test_a_test_record_of_another_kind_is_mapped_as_the_semantic_mapper_maps_it(tiny):
    # a panoptic-trained FreeSeg evaluated on a semantic set (the shipped COCO-Stuff eval
    # config): the test mapper reads the image; the evaluator reads the label files itself
    kinds = (("ovseg_panoptic", PANOPTIC, 3), ("ovseg_instance", INSTANCE, 2))
    for name, dataset, classes in kinds:
        cfg = get_cfg()
        add_ovseg_config(cfg)
        cfg.INPUT.DATASET_MAPPER_NAME = name
        cfg.DATASETS.TEST = (dataset,)
        mapper = build_dataset_mapper(cfg, is_train=False, dataset_name=dataset)
        record = dict(DatasetCatalog.get(dataset)[0])
        record.pop("pan_seg_file_name", None), record.pop("annotations", None)
        out = mapper(record)
        assert out["image"].shape[0] == 3 and "instances" not in out
        assert out["vocabulary"] == ["cat", "dog", "sky"][:classes]
        # a record of the mapper's own kind still gets its targets at test
        assert "instances" in mapper(dict(DatasetCatalog.get(dataset)[0]))
