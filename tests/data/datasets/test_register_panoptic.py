"""Registration of the panoptic / instance benchmarks: metadata, splits, load-time errors."""

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data.datasets.common import datasets_root
from ovseg.data.datasets.register_ade20k_panoptic import register_all_ade20k_panoptic

SPLITS = {  # name: (classes, things, unseen)
    "coco_2017_val_panoptic_with_sem_seg": (133, 80, 11),
    "coco_2017_train_full_task": (171, 80, 15),
    "coco_2017_train_full_task_base": (156, 73, 0),
    "coco_2017_train_full_task_base_release_json": (156, 73, 0),
    "coco_2017_train_instance_48_17": (48, 48, 0),
    "coco_2017_val_instance_48_17": (65, 65, 17),
    "ade20k_panoptic_val": (150, 100, 15),
    "ade20k_panoptic_train_base": (135, 89, 0),
    "ade20k_instance_val": (100, 100, 11),
    "ade20k_instance_train_base": (89, 89, 0),
}


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_metadata(name):
    meta = MetadataCatalog.get(name)
    classes, things, unseen = SPLITS[name]
    assert (len(meta.stuff_classes), len(meta.thing_classes)) == (classes, things)
    assert len(meta.unseen_classes) == unseen
    assert len(meta.seen_classes) + unseen == classes
    assert meta.evaluator_type in ("ovseg_panoptic", "ovseg_instance")
    # thing ids point at their names in stuff_classes
    for index in meta.thing_dataset_id_to_contiguous_id.values():
        assert meta.stuff_classes[index] in meta.thing_classes


def test_freeseg_unseen_classes():
    meta = MetadataCatalog.get("coco_2017_train_full_task")
    assert meta.unseen_classes == [
        "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors",
        "cardboard", "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete",
    ]  # fmt: skip
    ade = MetadataCatalog.get("ade20k_instance_val").unseen_classes
    assert len(ade) == 11 and "grass" not in ade and "table" in ade


def test_missing_files_name_the_path_and_script(tmp_path):
    register_all_ade20k_panoptic(str(tmp_path))
    try:
        with pytest.raises(FileNotFoundError, match="prepare_ade20k_panoptic.py"):
            DatasetCatalog.get("ade20k_panoptic_val")
    finally:
        register_all_ade20k_panoptic(datasets_root())


@pytest.mark.parametrize(
    "config",
    [
        "coco/xpm/xpm_teacher_vitb16_90k_bs8.yaml",
        "coco/freeseg/freeseg_r101c_alltask_60k_bs32.yaml",
    ],
)
def test_paper_configs_build_their_training_mappers_on_these_registrations(config):
    # the registrations as they stand (not test fixtures): a base split without unseen
    # classes must be trained with a setting that has nothing to remove
    from ovseg_testing import CONFIGS

    from ovseg.data.dataset_mappers import build_dataset_mapper
    from ovseg.engine.defaults import load_config

    cfg = load_config(str(CONFIGS / config), ["MODEL.DEVICE", "cpu"])
    mapper = build_dataset_mapper(cfg, True, cfg.DATASETS.TRAIN[0])
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    assert list(mapper.vocabulary) == list(meta.stuff_classes)
