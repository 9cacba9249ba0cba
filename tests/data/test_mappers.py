import uuid

import numpy as np
import pytest
import torch
from ovseg_testing import make_store
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg import add_ovseg_config
from ovseg.data.dataset_mappers import (
    MAPPER_REGISTRY,
    ColorAugSSD,
    PhotometricDistortTransform,
    SemanticDatasetMapper,
    TeacherInputMapper,
    build_dataset_mapper,
    transform_label,
    zero_shot_label_map,
)
from ovseg.pseudo import pseudo_labelled_dataset_dicts

CLASSES = ["a", "b", "c", "d"]
UNSEEN = ["c"]
# a 4x6 pattern of labels (255 = ignore), each cell 8x8 pixels -> 32x48 images
BASE = np.array(
    [
        [0, 1, 2, 3, 255, 0],
        [1, 2, 2, 3, 3, 0],
        [255, 0, 1, 2, 3, 1],
        [3, 3, 0, 1, 2, 255],
    ],
    dtype=np.uint8,
)
# hand-written: dataset label -> training label
INDUCTIVE = {0: 0, 1: 1, 2: 255, 3: 2, 255: 255}
TRANSDUCTIVE = {0: 0, 1: 1, 2: 255, 3: 3, 255: 255}


def _apply(mapping, labels):
    return np.vectorize(mapping.__getitem__)(labels)


def _matches_maybe_flipped(out: torch.Tensor, expected: np.ndarray) -> bool:
    out = out.numpy()
    return np.array_equal(out, expected) or np.array_equal(out, expected[:, ::-1])


@pytest.fixture
def toy_dataset(tmp_path):
    """Two 32x48 images with label PNGs (and the labels again as pseudo-labels)."""
    name = f"ovseg_test_mapper_{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(0)
    dicts = []
    for i, pattern in enumerate((BASE, BASE[::-1].copy())):
        label = np.kron(pattern, np.ones((8, 8), dtype=np.uint8))
        image = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"img{i}.png")
        Image.fromarray(label).save(tmp_path / f"lbl{i}.png")
        dicts.append(
            {
                "file_name": str(tmp_path / f"img{i}.png"),
                "sem_seg_file_name": str(tmp_path / f"lbl{i}.png"),
                "image_id": i,
                "_label": label,
                "_image": image,
            }
        )
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(
        stuff_classes=list(CLASSES), unseen_classes=list(UNSEEN), ignore_label=255
    )
    yield name, dicts
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(dataset_name, setting="none", **overrides):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.DATASETS.TRAIN = (dataset_name,)
    cfg.DATASETS.TEST = (dataset_name,)
    cfg.MODEL.OVSEG.ZERO_SHOT_SETTING = setting
    # shortest edge 32 = the images' own: the resize is the identity
    cfg.INPUT.MIN_SIZE_TRAIN = (32,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MIN_SIZE_TEST = 32
    cfg.INPUT.MAX_SIZE_TEST = 1000
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            node = getattr(node, parent)
        setattr(node, leaf, value)
    return cfg


@pytest.mark.parametrize(
    "setting, mapping, vocabulary",
    [
        ("none", {v: v for v in (0, 1, 2, 3, 255)}, ["a", "b", "c", "d"]),
        ("inductive", INDUCTIVE, ["a", "b", "d"]),
        ("transductive", TRANSDUCTIVE, ["a", "b", "c", "d"]),
    ],
)
def test_training_labels_and_vocabulary(toy_dataset, setting, mapping, vocabulary):
    name, dicts = toy_dataset
    mapper = build_dataset_mapper(_cfg(name, setting), is_train=True)
    assert isinstance(mapper, SemanticDatasetMapper)
    for d in dicts:
        out = mapper(d)
        assert out["vocabulary"] == vocabulary
        assert out["sem_seg"].dtype == torch.long
        assert out["sem_seg"].shape == (32, 48)
        assert _matches_maybe_flipped(out["sem_seg"], _apply(mapping, d["_label"]))
        assert out["image"].dtype == torch.uint8
        assert out["image"].shape == (3, 32, 48)
        image = out["image"].permute(1, 2, 0).numpy()
        assert np.array_equal(image, d["_image"]) or np.array_equal(image, d["_image"][:, ::-1])
        assert (out["height"], out["width"]) == (32, 48)
        assert out["file_name"] == d["file_name"]
        # the caller's dict is not modified
        assert "image" not in d and "sem_seg_file_name" in d


def test_flip_moves_image_and_labels_together(toy_dataset):
    name, dicts = toy_dataset
    mapper = build_dataset_mapper(_cfg(name), is_train=True)
    flipped = 0
    for _ in range(20):
        out = mapper(dicts[0])
        image = out["image"].permute(1, 2, 0).numpy()
        is_flipped = not np.array_equal(image, dicts[0]["_image"])
        expected = dicts[0]["_label"][:, ::-1] if is_flipped else dicts[0]["_label"]
        assert np.array_equal(out["sem_seg"].numpy(), expected)
        flipped += is_flipped
    assert 0 < flipped < 20


def test_training_samples_record_their_transforms(toy_dataset):
    # the recorded TransformList replays the sample's geometry on the original label
    name, dicts = toy_dataset
    mapper = build_dataset_mapper(_cfg(name), is_train=True)
    for _ in range(10):
        out = mapper(dicts[0])
        replayed = out["transforms"].apply_segmentation(dicts[0]["_label"])
        assert np.array_equal(out["sem_seg"].numpy(), replayed)
        assert torch.equal(transform_label(dicts[0]["_label"], out["transforms"]), out["sem_seg"])
    test_mapper = build_dataset_mapper(_cfg(name), is_train=False, dataset_name=name)
    assert "transforms" not in test_mapper(dicts[0])


@pytest.mark.parametrize("setting", ["inductive", "transductive"])
def test_unseen_never_a_training_target(toy_dataset, setting):
    name, dicts = toy_dataset
    cfg = _cfg(
        name,
        setting,
        **{
            "INPUT.MIN_SIZE_TRAIN": (24, 32, 40, 48),
            "INPUT.CROP.ENABLED": True,
            "INPUT.CROP.TYPE": "absolute",
            "INPUT.CROP.SIZE": (20, 28),
            "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 0.6,
            "INPUT.COLOR_AUG_SSD": True,
            "INPUT.SIZE_DIVISIBILITY": 16,
        },
    )
    mapper = build_dataset_mapper(cfg, is_train=True)
    mapping = INDUCTIVE if setting == "inductive" else TRANSDUCTIVE
    lut = np.full(256, 255)
    for k, v in mapping.items():
        lut[k] = v
    unseen_pixels = 0
    for i in range(40):
        d = dict(dicts[i % 2])
        # the raw labels ride along as "pseudo-labels": same geometry, never remapped
        d["pseudo_sem_seg_file_name"] = d["sem_seg_file_name"]
        out = mapper(d)
        sem_seg, raw = out["sem_seg"].numpy(), out["pseudo_sem_seg"].numpy()
        assert sem_seg.shape == raw.shape == tuple(out["image"].shape[1:])
        assert sem_seg.shape[0] % 16 == 0 and sem_seg.shape[1] % 16 == 0
        assert np.array_equal(sem_seg, lut[raw])
        assert not np.any(sem_seg[raw == 2] != 255)
        if setting == "transductive":
            assert 2 not in np.unique(sem_seg)
        assert set(np.unique(sem_seg)) <= {0, 1, 2, 3, 255}
        unseen_pixels += int((raw == 2).sum())
    assert unseen_pixels > 0  # the crops did contain unseen pixels


def test_store_labels_are_translated_into_training_indices(toy_dataset, tmp_path):
    # a store over its own names (not the dataset's order; "c" is unseen, "zebra" unknown)
    name, dicts = toy_dataset
    names = ["d", "c", "a", "zebra"]
    store = make_store(tmp_path / "store", names, dataset=name)
    raw = {d["image_id"]: np.kron(BASE % 4, np.ones((8, 8), np.int64)) for d in dicts}
    for d in dicts:
        raw[d["image_id"]][:8, :8] = 255
        store.write(str(d["image_id"]), raw[d["image_id"]], np.ones((32, 48)))
    cfg = _cfg(name, "inductive", **{"DATASETS.PSEUDO_LABELS": store.root})
    mapper = build_dataset_mapper(cfg, is_train=True)
    for d in pseudo_labelled_dataset_dicts(cfg):
        out = mapper(d)
        assert out["vocabulary"] == ["a", "b", "d"]
        # store value -> training index: d -> 2, c (unseen) -> ignore, a -> 0, zebra -> ignore
        expected = np.array([2, 255, 0, 255] + [255] * 252)[raw[d["image_id"]]]
        assert _matches_maybe_flipped(out["pseudo_sem_seg"], expected)
    # a mapper built by hand keeps the store's values (no table)
    assert build_dataset_mapper(_cfg(name, "inductive"), is_train=True).pseudo_label_map is None


def test_teacher_input_mapper_needs_the_samples_transforms(toy_dataset):
    name, dicts = toy_dataset
    test_mapper = build_dataset_mapper(_cfg(name), is_train=False, dataset_name=name)
    train_mapper = build_dataset_mapper(_cfg(name), is_train=True)
    out = TeacherInputMapper(train_mapper, test_mapper)(dicts[0])
    assert set(out["teacher_input"]) == {"file_name", "image", "height", "width"}
    assert torch.equal(out["teacher_input"]["image"], test_mapper(dicts[0])["image"])
    with pytest.raises(ValueError, match="no 'transforms'"):
        TeacherInputMapper(test_mapper, test_mapper)(dicts[0])


def test_padding_to_size_divisibility(toy_dataset):
    name, dicts = toy_dataset
    d = dict(dicts[0], pseudo_sem_seg_file_name=dicts[0]["sem_seg_file_name"])
    mapper = build_dataset_mapper(_cfg(name, **{"INPUT.SIZE_DIVISIBILITY": 20}), is_train=True)
    out = mapper(d)
    assert out["image"].shape == (3, 40, 60)
    assert out["sem_seg"].shape == (40, 60)
    for key in ("sem_seg", "pseudo_sem_seg"):
        assert torch.all(out[key][32:, :] == 255)
        assert torch.all(out[key][:, 48:] == 255)
        assert _matches_maybe_flipped(out[key][:32, :48], dicts[0]["_label"])
    assert torch.all(out["image"][:, 32:, :] == 0)
    assert torch.all(out["image"][:, :, 48:] == 0)
    assert (out["height"], out["width"]) == (32, 48)


def test_test_mapper_keeps_labels_and_attaches_dataset_vocabulary(toy_dataset):
    name, dicts = toy_dataset
    cfg = _cfg(name, "inductive", **{"INPUT.SIZE_DIVISIBILITY": 20})
    mapper = build_dataset_mapper(cfg, is_train=False, dataset_name=name)
    for d in dicts:
        out = mapper(d)
        # no zero-shot remap, no flip, no padding in test
        assert np.array_equal(out["sem_seg"].numpy(), d["_label"])
        assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), d["_image"])
        assert out["vocabulary"] == CLASSES

    # a dataset dict without labels (the demo's images) maps without "sem_seg"
    out = mapper({"file_name": dicts[0]["file_name"]})
    assert "sem_seg" not in out
    assert out["vocabulary"] == CLASSES
    assert (out["height"], out["width"]) == (32, 48)


def test_test_mapper_resizes_like_the_config(toy_dataset):
    name, dicts = toy_dataset
    cfg = _cfg(name, **{"INPUT.MIN_SIZE_TEST": 16})
    out = build_dataset_mapper(cfg, is_train=False)(dicts[0])
    assert out["image"].shape == (3, 16, 24)
    assert np.array_equal(out["sem_seg"].numpy(), np.kron(BASE, np.ones((4, 4), np.uint8)))
    assert (out["height"], out["width"]) == (32, 48)


def test_opencv_backend_resizes_as_mmcv(toy_dataset):
    import cv2

    name, dicts = toy_dataset
    cfg = _cfg(name, **{"INPUT.MIN_SIZE_TEST": 16, "INPUT.RESIZE_BACKEND": "opencv"})
    out = build_dataset_mapper(cfg, is_train=False)(dicts[0])
    want = cv2.resize(dicts[0]["_image"], (24, 16), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), want)
    pil = build_dataset_mapper(_cfg(name, **{"INPUT.MIN_SIZE_TEST": 16}), is_train=False)
    assert not torch.equal(pil(dicts[0])["image"], out["image"])  # PIL antialiases
    # halving: OpenCV's nearest reads the even pixels (floor(2 x))
    assert np.array_equal(out["sem_seg"].numpy(), dicts[0]["_label"][::2, ::2])
    # training: the same resize to 16, maybe flipped
    cfg = _cfg(name, **{"INPUT.MIN_SIZE_TRAIN": (16,), "INPUT.RESIZE_BACKEND": "opencv"})
    out = build_dataset_mapper(cfg, is_train=True)(dicts[0])
    image = out["image"].permute(1, 2, 0).numpy()
    assert np.array_equal(image, want) or np.array_equal(image, want[:, ::-1])


def test_test_vocabulary_from_config(toy_dataset):
    name, dicts = toy_dataset
    cfg = _cfg(name, **{"MODEL.OVSEG.TEST_VOCABULARY": "cat, dog"})
    out = build_dataset_mapper(cfg, is_train=False, dataset_name=name)(dicts[0])
    assert out["vocabulary"] == ["cat", "dog"]
    cfg.MODEL.OVSEG.TEST_VOCABULARY = "voc20"
    out = build_dataset_mapper(cfg, is_train=False, dataset_name=name)(dicts[0])
    assert len(out["vocabulary"]) == 20 and out["vocabulary"][0] == "aeroplane"


def test_train_vocabulary_maps_labels_by_name(toy_dataset):
    name, dicts = toy_dataset
    cfg = _cfg(name, "inductive", **{"MODEL.OVSEG.TRAIN_VOCABULARY": "d, A, c, zebra"})
    out = build_dataset_mapper(cfg, is_train=True)(dicts[0])
    # inductive: "c" leaves the vocabulary; "b" is not in it
    assert out["vocabulary"] == ["d", "A", "zebra"]
    expected = _apply({0: 1, 1: 255, 2: 255, 3: 0, 255: 255}, dicts[0]["_label"])
    assert _matches_maybe_flipped(out["sem_seg"], expected)


def test_zero_shot_label_map_table():
    table, vocabulary = zero_shot_label_map(CLASSES, unseen=UNSEEN, setting="inductive")
    assert vocabulary == ("a", "b", "d")
    assert table.shape == (256,) and table.dtype == np.uint8
    assert table[:5].tolist() == [0, 1, 255, 2, 255]
    assert np.all(table[4:] == 255)
    table, vocabulary = zero_shot_label_map(CLASSES, unseen=UNSEEN, setting="transductive")
    assert table[:4].tolist() == [0, 1, 255, 3] and vocabulary == tuple(CLASSES)
    assert zero_shot_label_map(CLASSES, unseen=UNSEEN, setting="none") == (None, tuple(CLASSES))
    with pytest.raises(ValueError, match="every pixel would be ignored"):
        zero_shot_label_map(CLASSES, setting="none", target_names=["zebra"])


def test_sixteen_bit_labels(tmp_path):
    name = f"ovseg_test_mapper16_{uuid.uuid4().hex[:8]}"
    classes = [f"class {i}" for i in range(300)]
    label = np.kron(np.array([[0, 299], [65535, 256]], dtype=np.uint16), np.ones((8, 8), np.uint16))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(label).save(tmp_path / "lbl.png")
    d = {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "lbl.png")}
    DatasetCatalog.register(name, lambda: [d])
    MetadataCatalog.get(name).set(
        stuff_classes=classes, unseen_classes=["class 256"], ignore_label=65535
    )
    try:
        cfg = _cfg(name, "transductive", **{"INPUT.MIN_SIZE_TRAIN": (16,)})
        cfg.INPUT.MIN_SIZE_TEST = 32  # a 2x nearest resize of the labels
        out = build_dataset_mapper(cfg, is_train=False)(d)
        assert np.array_equal(out["sem_seg"].numpy(), np.kron(label, np.ones((2, 2))))
        out = build_dataset_mapper(cfg, is_train=True)(d)
        expected = np.where(label == 256, 65535, label)
        assert _matches_maybe_flipped(out["sem_seg"], expected)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_unknown_mapper_name_lists_registered(toy_dataset):
    cfg = _cfg(toy_dataset[0], **{"INPUT.DATASET_MAPPER_NAME": "ovseg_semantics"})
    with pytest.raises(KeyError, match=r"'ovseg_semantics'.*'ovseg_semantic'"):
        build_dataset_mapper(cfg, is_train=True)
    assert "ovseg_semantic" in MAPPER_REGISTRY


def test_unknown_zero_shot_setting(toy_dataset):
    for is_train in (True, False):
        with pytest.raises(ValueError, match=r"'zeroshot'.*'inductive'"):
            build_dataset_mapper(_cfg(toy_dataset[0], "zeroshot"), is_train=is_train)


@pytest.mark.parametrize("unseen, found", [(None, "no unseen_classes metadata"), ([], "empty")])
def test_zero_shot_setting_needs_unseen_classes(toy_dataset, unseen, found):
    name = toy_dataset[0]
    meta = MetadataCatalog.get(name)
    MetadataCatalog.remove(name)
    fields = {"stuff_classes": CLASSES, "ignore_label": 255}
    if unseen is not None:
        fields["unseen_classes"] = unseen
    MetadataCatalog.get(name).set(**fields)
    try:
        with pytest.raises(ValueError, match=f"'inductive' needs unseen classes.*{found}"):
            build_dataset_mapper(_cfg(name, "inductive"), is_train=True)
        # the test mapper does not need a split
        build_dataset_mapper(_cfg(name, "inductive"), is_train=False)
    finally:
        MetadataCatalog.remove(name)
        MetadataCatalog.get(name).set(**{k: meta.get(k) for k in ("stuff_classes", "ignore_label")})


def test_bad_samples_are_named(toy_dataset, tmp_path):
    name, dicts = toy_dataset
    mapper = build_dataset_mapper(_cfg(name), is_train=True)
    with pytest.raises(ValueError, match=r"img0\.png.*neither 'sem_seg_file_name'"):
        mapper({"file_name": dicts[0]["file_name"]})
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"small\.png.*10x10.*48x32"):
        mapper(
            {"file_name": dicts[0]["file_name"], "sem_seg_file_name": str(tmp_path / "small.png")}
        )
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png.*single-channel"):
        mapper({"file_name": dicts[0]["file_name"], "sem_seg_file_name": str(tmp_path / "rgb.png")})


def test_photometric_transform():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    label = rng.integers(0, 4, size=(8, 8)).astype(np.uint8)
    assert np.array_equal(PhotometricDistortTransform().apply_image(image), image)
    brighter = PhotometricDistortTransform(brightness=10).apply_image(image)
    assert np.array_equal(brighter, np.minimum(image.astype(int) + 10, 255))
    # the official convert truncates: v + 10.7 -> v + 10, 0.5 v -> floor(v / 2)
    assert np.array_equal(PhotometricDistortTransform(brightness=10.7).apply_image(image), brighter)
    halved = PhotometricDistortTransform(contrast=0.5).apply_image(image)
    assert np.array_equal(halved, image // 2)
    darker = PhotometricDistortTransform(brightness=-0.5).apply_image(image)
    assert np.array_equal(darker, np.maximum(image.astype(int) - 1, 0))
    # a drawn hue shift of 0 still goes to HSV and back (not the identity in uint8)
    assert not np.array_equal(PhotometricDistortTransform(hue=0).apply_image(image), image)
    with pytest.raises(ValueError, match="whole number"):
        PhotometricDistortTransform(hue=2.5)
    grey = PhotometricDistortTransform(saturation=0.0).apply_image(image)
    assert np.all(grey.max(axis=2) - grey.min(axis=2) <= 1)  # no saturation left
    tfm = PhotometricDistortTransform(brightness=5, contrast=1.2, saturation=1.3, hue=9)
    assert np.array_equal(tfm.apply_segmentation(label), label)
    with pytest.raises(ValueError, match="uint8"):
        tfm.apply_image(image.astype(np.float32))


@pytest.mark.parametrize("hue_range, high", [("detectron2", 18), ("mmseg", 17)])
def test_hue_shift_range(hue_range, high):
    # detectron2 draws the whole shift from [-18, 18], mmseg's numpy randint from [-18, 17]
    aug = ColorAugSSD(hue_range=hue_range)
    image = np.zeros((2, 2, 3), np.uint8)
    np.random.seed(0)
    hues = {aug.get_transform(image).hue for _ in range(3000)} - {None}
    assert hues == set(range(-18, high + 1))


def test_hue_range_from_config(toy_dataset):
    cfg = _cfg(toy_dataset[0])
    cfg.INPUT.COLOR_AUG_SSD = True
    cfg.INPUT.COLOR_AUG_HUE_RANGE = "mmseg"
    augs = build_dataset_mapper(cfg, is_train=True).augmentations.augs
    assert [a.hue_range for a in augs if isinstance(a, ColorAugSSD)] == ["mmseg"]
    cfg.INPUT.COLOR_AUG_HUE_RANGE = "numpy"
    with pytest.raises(ValueError, match=r"COLOR_AUG_HUE_RANGE 'numpy'.*\[-18, 17\]"):
        build_dataset_mapper(cfg, is_train=True)
