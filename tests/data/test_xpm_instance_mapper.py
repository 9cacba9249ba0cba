"""The ovseg_xpm_instance mapper: seen ground truth + stored pseudo instances over the full
vocabulary, moved by the same transforms, on the captioned COCO-layout fixture."""

import numpy as np
import pytest
import torch
from ovseg_testing.paths import CONFIGS
from ovseg_testing.xpm import OBJECTS, XPM_TRAIN, object_mask, registered_captioned_coco

from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.structures import BitMasks

from ovseg.data import build_dataset_mapper
from ovseg.data.dataset_mappers import InstanceDatasetMapper, XPMInstanceDatasetMapper
from ovseg.data.dataset_mappers.xpm_instance import seen_label_map
from ovseg.engine.defaults import load_config
from ovseg.pseudo import InstancePseudoLabelStore, PseudoLabelStore, attach_pseudo_instances
from ovseg.pseudo.instances import encode_mask

VOCAB = ["person", "dog", "tv"]
DATASET_CLASSES = ["person", "dog", "tv"]  # the fixture's categories, contiguous


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    with registered_captioned_coco(tmp_path_factory.mktemp("datasets")) as coco:
        yield coco


def _pseudo(category, cid, obj, score, noun):
    mask = object_mask(OBJECTS[1][obj][1])
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    return {"noun": noun, "category": category, "category_id": cid, "box": box,
            "mask": encode_mask(mask), "cosine": 0.3, "score": score, "proposal": obj}  # fmt: skip


@pytest.fixture
def store(tmp_path):
    manifest = {"fingerprint": "f" * 64, "vocabulary": VOCAB, "threshold": 0.0,
                "dataset": XPM_TRAIN, "unseen": ["dog"]}  # fmt: skip
    s = InstancePseudoLabelStore.create(str(tmp_path / "store"), manifest)
    s.write("1", {"height": 32, "width": 48, "instances": [
        _pseudo("dog", 1, 1, 0.6, "dog"), _pseudo("tv", 2, 2, 0.55, "television")]})  # fmt: skip
    s.write("2", {"height": 32, "width": 48, "instances": []})
    return s


def _mapper(augs, threshold=0.0, divisibility=128):
    return XPMInstanceDatasetMapper(
        is_train=True, augmentations=augs, image_format="RGB", ignore_label=255,
        size_divisibility=divisibility, vocabulary=VOCAB, pseudo_score_threshold=threshold,
        label_map=seen_label_map(DATASET_CLASSES, ["dog"], VOCAB, 255),
    )  # fmt: skip


def test_targets_are_seen_gt_plus_pseudo_moved_by_the_same_transforms(captioned, store):
    d = attach_pseudo_instances(DatasetCatalog.get(XPM_TRAIN), store)[0]
    augs = [T.ResizeTransform(32, 48, 64, 96), T.HFlipTransform(96)]
    out = _mapper(augs)(d)
    inst = out["instances"]
    assert inst.image_size == (128, 128) and out["image"].shape == (3, 128, 128)
    assert isinstance(inst.gt_masks, BitMasks)
    assert inst.gt_classes.tolist() == [0, 2, 1, 2]  # GT person, tv; pseudo dog, tv
    assert inst.gt_is_pseudo.tolist() == [False, False, True, True]
    assert inst.gt_scores.tolist() == pytest.approx([1.0, 1.0, 0.6, 0.55])
    # the tv stripe (cols 32-47) doubled and flipped lands at cols 0-31, rows 8-55
    assert inst.gt_boxes.tensor[3].tolist() == [0.0, 8.0, 32.0, 56.0]
    assert inst.gt_boxes.tensor[1].tolist() == [0.0, 8.0, 32.0, 56.0]  # its GT twin
    assert torch.equal(inst.gt_masks.tensor[3], inst.gt_masks.tensor[1])
    assert not inst.gt_masks.tensor[:, 64:].any()  # padding
    assert int(inst.gt_masks.tensor[2].sum()) == 32 * 48


def test_score_threshold_crop_and_images_without_pseudo(captioned, store):
    dicts = attach_pseudo_instances(DatasetCatalog.get(XPM_TRAIN), store)
    out = _mapper([], threshold=0.58, divisibility=-1)(dicts[0])
    assert out["instances"].gt_is_pseudo.tolist() == [False, False, True]  # tv dropped
    crop = _mapper([T.CropTransform(0, 0, 20, 32)], divisibility=-1)(dicts[0])
    assert crop["instances"].gt_classes.tolist() == [0, 1]  # only person and pseudo dog remain
    assert crop["instances"].gt_boxes.tensor[1].tolist() == [16.0, 4.0, 20.0, 28.0]
    plain = _mapper([], divisibility=-1)(DatasetCatalog.get(XPM_TRAIN)[1])
    assert plain["instances"].gt_is_pseudo.tolist() == [False, False]


def _cfg(*opts):
    base = [
        "INPUT.DATASET_MAPPER_NAME", "ovseg_xpm_instance",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "DATASETS.TRAIN", f"('{XPM_TRAIN}',)", "MODEL.DEVICE", "cpu",
    ]  # fmt: skip
    return load_config(str(CONFIGS / "Base-ovseg.yaml"), [*base, *opts])


def test_config_vocabulary_store_and_test_mode(captioned, store, tmp_path):
    mapper = build_dataset_mapper(_cfg("DATASETS.PSEUDO_LABELS", store.root), True)
    assert mapper.vocabulary == tuple(VOCAB)  # the store's full vocabulary
    assert mapper.label_map[:3].tolist() == [0, 255, 2]  # dataset dog -> removed
    wide = build_dataset_mapper(_cfg("MODEL.OVSEG.TRAIN_VOCABULARY", "cat,tv,dog,person"), True)
    assert wide.vocabulary == ("cat", "tv", "dog", "person")
    assert wide.label_map[:3].tolist() == [3, 255, 1]
    test = build_dataset_mapper(_cfg(), False, XPM_TRAIN)
    d = DatasetCatalog.get(XPM_TRAIN)[0]
    ref = InstanceDatasetMapper(
        is_train=False, augmentations=test.augmentations.augs, image_format="RGB",
        ignore_label=255, size_divisibility=-1, vocabulary=test.vocabulary,
    )  # fmt: skip
    assert torch.equal(test(d)["instances"].gt_classes, ref(d)["instances"].gt_classes)


def test_bad_configs_are_named(captioned, store, tmp_path):
    with pytest.raises(ValueError, match="not in the XPM vocabulary"):
        build_dataset_mapper(_cfg("MODEL.OVSEG.TRAIN_VOCABULARY", "person,cat"), True)
    with pytest.raises(ValueError, match="outside the training vocabulary"):
        build_dataset_mapper(
            _cfg("DATASETS.PSEUDO_LABELS", store.root, "MODEL.OVSEG.TRAIN_VOCABULARY", "person,tv"),
            True,
        )
    semantic = PseudoLabelStore.create(
        str(tmp_path / "sem"), {"fingerprint": "0" * 64, "vocabulary": VOCAB, "threshold": 0.0}
    )
    with pytest.raises(ValueError, match="holds semantic pseudo-labels, not instances"):
        build_dataset_mapper(_cfg("DATASETS.PSEUDO_LABELS", semantic.root), True)


def test_a_pseudo_instance_scoring_exactly_the_threshold_is_kept(captioned, tmp_path):
    # MODEL.XPM.PSEUDO_SCORE_THRESHOLD drops instances scoring below it: the default 0.0
    # drops none (a 0.0-scored tv stays), 0.6 keeps the 0.6-scored dog
    manifest = {"fingerprint": "f" * 64, "vocabulary": VOCAB, "threshold": 0.0,
                "dataset": XPM_TRAIN, "unseen": ["dog"]}  # fmt: skip
    exact = InstancePseudoLabelStore.create(str(tmp_path / "exact"), manifest)
    pseudo = [_pseudo("dog", 1, 1, 0.6, "dog"), _pseudo("tv", 2, 2, 0.0, "television")]
    exact.write("1", {"height": 32, "width": 48, "instances": pseudo})
    exact.write("2", {"height": 32, "width": 48, "instances": []})
    d = attach_pseudo_instances(DatasetCatalog.get(XPM_TRAIN), exact)[0]
    kept = _mapper([], 0.0, -1)(dict(d))["instances"].gt_is_pseudo.tolist()
    assert kept == [False, False, True, True]
    assert _mapper([], 0.6, -1)(dict(d))["instances"].gt_is_pseudo.tolist() == [False, False, True]
