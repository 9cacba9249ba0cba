"""INPUT.CROP.CATEGORY_COUNT: which labels the crop's category-area rule counts.

Hand-built stripe labels make every window hold the same class shares, so a rule either
accepts the first window it draws or rejects all ten and keeps the last one."""

import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T

from ovseg import add_ovseg_config
from ovseg.benchmark.mapper import reference_mapper
from ovseg.data.dataset_mappers import build_dataset_mapper
from ovseg.data.dataset_mappers.crop_count import (
    CountedCategoryAreaCrop,
    CropCountInput,
    crop_count_table,
)
from ovseg.data.dataset_mappers.fast_crop import CategoryAreaCrop

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["a", "b", "c", "d", "e"]  # d, e unseen
UNSEEN = ["d", "e"]
SIZE, CROP = 40, 20


def stripes(pattern):
    """A (40, 40) uint8 label whose column x holds ``pattern[x % len(pattern)]``: every 20-wide
    window holds the same share of each class when len(pattern) divides 20."""
    row = np.array([pattern[x % len(pattern)] for x in range(SIZE)], np.uint8)
    return np.repeat(row[None], SIZE, axis=0)


# seen a 70 %, unseen d 30 %: the dataset's count accepts, the training count (d ignored,
# a alone) rejects
ZEG_ACCEPTS = stripes([0] * 7 + [3] * 3)
# unseen d 80 %, seen a and b 10 % each: the dataset's count rejects, the training count
# (a and b, 50 % each) accepts
ZEG_REJECTS = stripes([3] * 8 + [0, 1])
# unseen d and e 40 % each, seen a 20 %: counted one by one accepted, as one class (80 %)
# rejected
MCP_REJECTS = stripes([3] * 4 + [4] * 4 + [0] * 2)


def windows(seed, tries, resized=False):
    """The (y0, x0) of the first ``tries`` windows a crop draws after np.random.seed(seed)
    (``resized``: after the ratio-range resize's draw)."""
    rng = np.random.RandomState(seed)
    if resized:
        rng.random_sample()
    return [(rng.randint(SIZE - CROP + 1), rng.randint(SIZE - CROP + 1)) for _ in range(tries)]


def decide(crop, label, counts, seed):
    """The (y0, x0) window ``crop`` takes for ``label`` (counting ``counts`` if given)."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    if counts is None:
        aug_input = T.AugInput(image, sem_seg=label)
    else:
        aug_input = CropCountInput(image, sem_seg=label, crop_counts=counts)
    np.random.seed(seed)
    tfm = crop(aug_input)
    return tfm.y0, tfm.x0


def training_labels(label, setting):
    """The mapper's training labels of a dataset label in ``setting``."""
    table = np.full(256, 255, np.uint8)
    if setting == "inductive":
        table[[0, 1, 2]] = [0, 1, 2]  # unseen -> ignore, the seen ids kept
    else:  # "none"
        table[:5] = np.arange(5)
    return table[label]


@pytest.mark.parametrize("seed", range(4))
def test_dataset_count_accepts_and_rejects_what_the_training_count_does_not(seed):
    """ZegCLIP: the official crop counts the unseen classes as themselves (the inductive
    remap comes later, in the model)."""
    table = crop_count_table(
        "dataset", CLASSES, unseen=UNSEEN, label_map=np.zeros(256, np.uint8), ignore_label=255
    )
    plain = CategoryAreaCrop("absolute", (CROP, CROP), 0.75, 255)
    counted = CountedCategoryAreaCrop("absolute", (CROP, CROP), 0.75, 255)
    first, last = windows(seed, 10)[0], windows(seed, 10)[-1]
    for label, dataset_window, training_window in (
        (ZEG_ACCEPTS, first, last),
        (ZEG_REJECTS, last, first),
    ):
        train = training_labels(label, "inductive")
        assert decide(plain, train, None, seed) == training_window
        assert decide(counted, train, table[label], seed) == dataset_window
    assert first != last  # the seeds tell the two apart


@pytest.mark.parametrize("seed", range(4))
def test_unseen_as_one_rejects_what_counting_them_one_by_one_accepts(seed):
    """MaskCLIP+: LoadAnnotations gives every unseen pixel -1, one class for the crop."""
    table = crop_count_table("unseen_as_one", CLASSES, unseen=UNSEEN, ignore_label=255)
    assert table[:6].tolist() == [0, 1, 2, 3, 3, 255] and table[255] == 255
    plain = CategoryAreaCrop("absolute", (CROP, CROP), 0.75, 255)
    counted = CountedCategoryAreaCrop("absolute", (CROP, CROP), 0.75, 255)
    first, last = windows(seed, 10)[0], windows(seed, 10)[-1]
    train = training_labels(MCP_REJECTS, "none")
    assert decide(plain, train, None, seed) == first
    assert decide(counted, train, table[MCP_REJECTS], seed) == last


@pytest.mark.parametrize("label", [ZEG_ACCEPTS, MCP_REJECTS, stripes([0, 1, 2, 3, 4])])
def test_classes_as_one_never_passes(label):
    """Annotation-free MaskCLIP+ suppresses every class: no window holds two classes, so
    the crop keeps the last of its ten, whatever the labels."""
    table = crop_count_table("classes_as_one", CLASSES, unseen=None, ignore_label=255)
    assert table[:6].tolist() == [0, 0, 0, 0, 0, 255]
    counted = CountedCategoryAreaCrop("absolute", (CROP, CROP), 0.75, 255)
    assert decide(counted, label, table[label], 3) == windows(3, 10)[-1]
    plain = CategoryAreaCrop("absolute", (CROP, CROP), 0.75, 255)
    assert decide(plain, stripes([0, 1, 2, 3, 4]), None, 3) == windows(3, 10)[0]


def test_tables():
    zero_shot = np.zeros(256, np.uint8)
    kwargs = dict(unseen=UNSEEN, ignore_label=255)
    assert crop_count_table("training", CLASSES, label_map=zero_shot, **kwargs) is None
    # no remap: the dataset's labels are the training labels
    assert crop_count_table("dataset", CLASSES, **kwargs) is None
    # no constrained crop: nothing to count
    assert crop_count_table("unseen_as_one", CLASSES, constrained=False, **kwargs) is None
    table = crop_count_table("dataset", CLASSES, label_map=zero_shot, **kwargs)
    assert table.dtype == np.uint8 and table[:5].tolist() == [0, 1, 2, 3, 4]
    assert set(table[5:].tolist()) == {255}  # no class: ignored
    wide = crop_count_table("unseen_as_one", CLASSES, unseen=UNSEEN, ignore_label=65535)
    assert wide.dtype == np.int64 and wide[[3, 4, 5, 65535]].tolist() == [3, 3, 65535, 65535]


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match=r"CATEGORY_COUNT 'bogus'.*'training', 'dataset'"):
        crop_count_table("bogus", CLASSES, constrained=False)
    with pytest.raises(ValueError, match=r"dataset 'x' has no unseen_classes"):
        crop_count_table("unseen_as_one", CLASSES, unseen=None, dataset_name="x")
    with pytest.raises(ValueError, match="same image"):
        CropCountInput(np.zeros((4, 4, 3), np.uint8), sem_seg=np.zeros((4, 4), np.uint8),
                       crop_counts=np.zeros((4, 5), np.uint8))  # fmt: skip


@pytest.fixture
def striped_dataset(tmp_path):
    """One 40x40 image per stripe label, registered with five classes, d and e unseen."""
    name = f"ovseg_test_crop_count_{uuid.uuid4().hex[:8]}"
    dicts = []
    for i, label in enumerate((ZEG_ACCEPTS, ZEG_REJECTS, MCP_REJECTS)):
        image = np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        Image.fromarray(label).save(tmp_path / f"{i}_gt.png")
        dicts.append({"file_name": str(tmp_path / f"{i}.png"), "image_id": i,
                      "sem_seg_file_name": str(tmp_path / f"{i}_gt.png")})  # fmt: skip
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, unseen_classes=UNSEEN, ignore_label=255)
    yield name, dicts
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def mapper_cfg(name, setting, count):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.OVSEG.ZERO_SHOT_SETTING = setting
    cfg.INPUT.RESIZE_IMG_SCALE = [SIZE, SIZE]  # ratio 1: the image keeps its size
    cfg.INPUT.RESIZE_RATIO_RANGE = [1.0, 1.0]
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [CROP, CROP]
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75
    cfg.INPUT.CROP.CATEGORY_COUNT = count
    return cfg


def crop_window(sample):
    (crop,) = [t for t in sample["transforms"] if isinstance(t, T.CropTransform)]
    return crop.y0, crop.x0


@pytest.mark.parametrize(
    "setting, count, index, takes",
    [
        ("inductive", "training", 0, "last"),  # ZegCLIP's label, ovseg's count
        ("inductive", "dataset", 0, "first"),  # the official count
        ("inductive", "training", 1, "first"),
        ("inductive", "dataset", 1, "last"),
        ("none", "training", 2, "first"),  # MaskCLIP+'s label, ovseg's count
        ("none", "unseen_as_one", 2, "last"),  # the official count
    ],
)
def test_mapper_crops_where_its_count_says(striped_dataset, setting, count, index, takes):
    name, dicts = striped_dataset
    mapper = build_dataset_mapper(mapper_cfg(name, setting, count), is_train=True)
    counted = count != "training"
    assert isinstance(mapper.augmentations.augs[1], CountedCategoryAreaCrop) == counted
    np.random.seed(7)
    sample = mapper(dicts[index])
    y0, x0 = crop_window(sample)
    first, last = windows(7, 10, resized=True)[0], windows(7, 10, resized=True)[-1]
    assert first != last
    assert (y0, x0) == (first if takes == "first" else last)
    # the transforms still move the training labels: unseen pixels ignored when inductive
    label = np.asarray(Image.open(dicts[index]["sem_seg_file_name"]))
    want = training_labels(label, setting)[y0 : y0 + CROP, x0 : x0 + CROP]
    got = sample["sem_seg"].numpy()
    assert np.array_equal(got, want) or np.array_equal(got, want[:, ::-1])
    # the per-pixel reference mapper (np.unique on the counted labels) agrees
    np.random.seed(7)
    assert crop_window(reference_mapper(mapper)(dicts[index])) == (y0, x0)


def test_mapper_refuses_a_bad_value_and_a_sample_without_labels(striped_dataset, tmp_path):
    name, dicts = striped_dataset
    with pytest.raises(ValueError, match="Unknown INPUT.CROP.CATEGORY_COUNT 'seen'"):
        build_dataset_mapper(mapper_cfg(name, "inductive", "seen"), is_train=True)
    mapper = build_dataset_mapper(mapper_cfg(name, "inductive", "dataset"), is_train=True)
    pseudo_only = {"file_name": dicts[0]["file_name"],
                   "pseudo_sem_seg_file_name": dicts[0]["sem_seg_file_name"]}  # fmt: skip
    with pytest.raises(ValueError, match="no 'sem_seg_file_name'.*use 'training'"):
        mapper(pseudo_only)


def _merged(path: Path):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


def test_paper_configs_count_as_the_official_crops():
    """ZegCLIP's paper configs count the dataset's classes, MaskCLIP+'s the unseen ones as
    one (annotation-free: every class as one), and ovseg's variants as their paper configs;
    the toy configs count the training labels."""
    seen = 0
    for path in sorted(ROOT.glob("configs/*/zegclip/*.yaml")) + sorted(
        ROOT.glob("configs/*/maskclip_plus/*.yaml")
    ):
        cfg = _merged(path)
        crop = cfg.INPUT.CROP
        if "annofree" in path.stem:
            want = ("classes_as_one", 0.75)
        else:
            want = ("dataset" if "zegclip" in path.stem else "unseen_as_one", 0.75)
        assert (crop.CATEGORY_COUNT, crop.SINGLE_CATEGORY_MAX_AREA) == want, path
        assert crop.FALLBACK == "another", path  # mmseg's 11th window
        seen += 1
    assert seen >= 20
    for path in ROOT.glob("configs/toy/*.yaml"):
        crop = _merged(path).INPUT.CROP
        assert (crop.CATEGORY_COUNT, crop.FALLBACK) == ("training", "last_tried"), path
