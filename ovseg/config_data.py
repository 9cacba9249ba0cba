"""Config keys for the user's own data and words (custom datasets, synonyms, background) and
for what the training crop counts."""

from detectron2.config import CfgNode as CN


def add_data_and_words_config(cfg: CN) -> None:
    """DATASETS.CUSTOM, MODEL.OVSEG.SYNONYM_MERGE and TEST.BACKGROUND_THRESHOLD (after
    MODEL.OVSEG exists)."""
    # the user's own datasets, registered before DATASETS.TRAIN/TEST are looked up: a list of
    # registration specs ({"name", "images", "labels", "vocabulary", ...}) and/or paths to
    # registration files (.yaml/.json) holding such specs; docs/custom_dataset.md
    cfg.DATASETS.CUSTOM = []
    # a test class with synonyms ("pickup truck, truck", ADE's "road, route"): "max" = its
    # score is the maximum over its synonyms' scores, "mean" = its text embedding is the
    # mean of its synonyms' (training always uses the mean); docs/vocabulary.md measures both
    cfg.MODEL.OVSEG.SYNONYM_MERGE = "max"
    # > 0: a test vocabulary's MODEL.OVSEG.BACKGROUND_CLASS is not embedded but labels the
    # pixels whose best class probability is below this (VOC-21, PC-60); 0 = off
    cfg.TEST.BACKGROUND_THRESHOLD = 0.0


def add_crop_count_config(cfg: CN) -> None:
    """INPUT.CROP.CATEGORY_COUNT (ovseg/data/dataset_mappers/crop_count.py)."""
    # the labels the crop's SINGLE_CATEGORY_MAX_AREA rule counts: "training" (after the
    # zero-shot remap), "dataset" (the dataset's classes, unseen ones included: ZegCLIP),
    # "unseen_as_one" (the dataset's classes, every unseen class one class: MaskCLIP+) or
    # "classes_as_one" (every class one class: annotation-free MaskCLIP+, no window passes)
    cfg.INPUT.CROP.CATEGORY_COUNT = "training"
