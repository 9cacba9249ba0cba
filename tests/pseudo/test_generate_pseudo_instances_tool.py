"""tools/generate_pseudo_labels.py on an XPM config: the dispatch to caption pseudo instances,
the fingerprinted instance store, a resumed re-run, and the store feeding the XPM mapper."""

import json

import pytest
import torch
from ovseg_testing.paths import CONFIGS, ROOT
from ovseg_testing.scripts import run_script
from ovseg_testing.xpm import (
    XPM_TRAIN,
    captioned_labelling_opts,
    register_fake_teacher,
    registered_captioned_coco,
)

from ovseg.data import build_dataset_mapper
from ovseg.data.image_io import DataFileError
from ovseg.engine.defaults import load_config
from ovseg.engine.pseudo_instances import makes_instance_pseudo_labels
from ovseg.engine.pseudo_labelling import main, parse_args
from ovseg.pseudo import InstancePseudoLabelStore, pseudo_labelled_dataset_dicts


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    with registered_captioned_coco(tmp_path_factory.mktemp("datasets")) as coco:
        yield coco


def _opts(tmp_path, teacher):
    return captioned_labelling_opts(
        tmp_path,
        "MODEL.META_ARCHITECTURE", teacher,
        "MODEL.XPM.TEACHER_META_ARCHITECTURE", teacher,
        "MODEL.XPM.REGION_EMBEDDING", "pool",
        "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "96",
    )  # fmt: skip


def test_dispatch_is_by_meta_architecture(tmp_path):
    base = str(CONFIGS / "Base-ovseg.yaml")
    for arch in ("XPMTeacher", "XPMStudent"):  # the registered XPM meta-architectures
        assert makes_instance_pseudo_labels(load_config(base, ["MODEL.META_ARCHITECTURE", arch]))
    assert not makes_instance_pseudo_labels(load_config(base, []))


def test_tool_writes_an_instance_store_that_feeds_the_xpm_mapper(captioned, tmp_path):
    teacher = register_fake_teacher()
    out = tmp_path / "store"
    opts = _opts(tmp_path, teacher)
    argv = ["--config-file", str(CONFIGS / "Base-ovseg.yaml"), "--output", str(out)]
    stats = main(parse_args([*argv, "--no-progress", *opts]))
    assert stats == {"total": 2, "written": 2, "skipped": 0}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "instances" and manifest["count"] == 2
    assert manifest["vocabulary"] == ["person", "dog", "tv"] and manifest["unseen"] == ["dog"]
    assert manifest["dataset"] == XPM_TRAIN and manifest["threshold"] == 0.0
    xpm = manifest["teacher"]["settings"]["xpm"]
    assert xpm["region_embedding"] == "pool" and xpm["text"] == "noun"
    assert manifest["teacher"]["settings"]["meta_architecture"] == teacher
    assert len(manifest["teacher"]["clip"]) == 64 and len(manifest["fingerprint"]) == 64
    # the same command resumes; another region embedding is another labeller: refused
    assert main(parse_args([*argv, "--no-progress", *opts]))["skipped"] == 2
    crop = [*opts, "MODEL.XPM.REGION_EMBEDDING", "crop"]
    with pytest.raises(ValueError, match="made differently"):  # a user error, reported in one line
        main(parse_args([*argv, "--no-progress", *crop]))

    cfg = load_config(str(CONFIGS / "Base-ovseg.yaml"), [*opts, "DATASETS.PSEUDO_LABELS", str(out)])
    dicts = pseudo_labelled_dataset_dicts(cfg)
    store = InstancePseudoLabelStore.open(str(out))
    assert [d["pseudo_instances_sha256"] for d in dicts] == [store.digests()[i][0] for i in "12"]
    sample = build_dataset_mapper(cfg, True)(dicts[0])
    inst = sample["instances"]
    assert sample["vocabulary"] == ["person", "dog", "tv"]
    gt = inst.gt_classes[~inst.gt_is_pseudo].tolist()
    assert sorted(gt) == [0, 2]  # the unseen dog's ground truth is removed
    pseudo = inst.gt_classes[inst.gt_is_pseudo].tolist()
    assert 1 in pseudo  # ... and the captions' dog comes back as a pseudo instance
    assert len(pseudo) == len(store.read("1")["instances"])
    assert torch.all(inst.gt_scores[~inst.gt_is_pseudo] == 1)


def test_two_processes_write_the_store_one_process_writes(captioned, tmp_path, monkeypatch):
    """The tool with --num-gpus 2 (gloo): each process labels its share into one store, and
    the store holds what one process writes. The spawned processes see the fake teacher and
    the fixture dataset through a config EXTENSIONS module, as a user's own code would."""
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "xpm_fixture_extension.py").write_text(
        "from pathlib import Path\n"
        "from ovseg_testing.xpm import register_captioned_coco, register_fake_teacher\n"
        "register_fake_teacher()\n"
        f"register_captioned_coco(Path({str(captioned)!r}))\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{ext}:{ROOT / 'tests'}")
    opts = _opts(tmp_path, register_fake_teacher())
    config = ["--config-file", str(CONFIGS / "Base-ovseg.yaml"), "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(parse_args([*config, "--output", str(one), *opts]))["written"] == 2
    more = ["EXTENSIONS", "xpm_fixture_extension", "OUTPUT_DIR", str(tmp_path / "log2")]
    run_script("tools/generate_pseudo_labels.py", "--num-gpus", "2", *config,
               "--output", str(two), *opts, *more)  # fmt: skip
    for log in ("log.txt", "log.txt.rank1"):  # each process labelled one of the two images
        assert f"{two}: 1 images, 0 done" in (tmp_path / "log2" / log).read_text()
    a, b = InstancePseudoLabelStore.open(str(one)), InstancePseudoLabelStore.open(str(two))
    assert sorted(b.digests()) == ["1", "2"] and b.digests() == a.digests()
    made = json.loads((two / "manifest.json").read_text())
    assert made["count"] == 2
    assert made["fingerprint"] == json.loads((one / "manifest.json").read_text())["fingerprint"]


def test_the_lvis_caption_vocabulary_keys_its_own_store(captioned, tmp_path):
    from ovseg.data.captions.lvis import lvis_vocabulary

    opts = _opts(tmp_path, register_fake_teacher())
    lvis_opts = [*opts, "MODEL.XPM.CAPTION_VOCABULARY", "lvis"]
    base = ["--config-file", str(CONFIGS / "Base-ovseg.yaml"), "--no-progress"]
    train, lvis = tmp_path / "train", tmp_path / "lvis"
    main(parse_args([*base, "--output", str(train), *opts]))
    main(parse_args([*base, "--output", str(lvis), *lvis_opts]))
    made = json.loads((train / "manifest.json").read_text())
    manifest = json.loads((lvis / "manifest.json").read_text())
    assert "caption_vocabulary" not in made  # the training vocabulary: stores as before
    assert manifest["caption_vocabulary"] == "lvis"
    assert manifest["vocabulary"] == list(lvis_vocabulary()) and manifest["unseen"] == ["dog"]
    assert manifest["fingerprint"] != made["fingerprint"]
    # image 1's captions: "man", "woman" (person), "dogs", "puppy", "TV" (television set)
    # and, the verb "watching" lemmatised as spaCy does officially, "watch" (the wristwatch)
    store = InstancePseudoLabelStore.open(str(lvis))
    found = {(i.noun, i.category) for i in store.read("1")["instances"]}
    nouns = {"man": "person", "woman": "person", "dog": "dog", "puppy": "puppy"}
    nouns |= {"tv": "television set", "watch": "watch"}
    assert found == set(nouns.items())
    # one folder, one vocabulary: resuming the other way is refused
    with pytest.raises(ValueError, match="made differently"):
        main(parse_args([*base, "--output", str(train), *lvis_opts]))
    with pytest.raises(ValueError, match="CAPTION_SYNONYMS='coco' has no meaning"):
        main(parse_args([*base, "--output", str(tmp_path / "x"), *lvis_opts,
                         "MODEL.XPM.CAPTION_SYNONYMS", "coco"]))  # fmt: skip

    def mapper(store_root, *more):
        cfg = load_config(base[1], [*more, "DATASETS.PSEUDO_LABELS", str(store_root)])
        return build_dataset_mapper(cfg, True), pseudo_labelled_dataset_dicts(cfg)

    for root, more, made_with in ((train, lvis_opts, "train"), (lvis, opts, "lvis")):
        with pytest.raises(
            ValueError, match=f"made with MODEL.XPM.CAPTION_VOCABULARY '{made_with}'"
        ):
            mapper(root, *more)
    lvis_mapper, dicts = mapper(lvis, *lvis_opts)
    sample = lvis_mapper(dicts[0])
    names = list(lvis_vocabulary())
    assert sample["vocabulary"] == ["person", "dog", "tv"] and sample["pseudo_vocabulary"] == names
    inst = sample["instances"]
    assert sorted(inst.gt_classes[~inst.gt_is_pseudo].tolist()) == [0, 2]  # seen GT: training names
    pseudo = sorted(inst.gt_classes[inst.gt_is_pseudo].tolist())  # LVIS ids
    assert pseudo == sorted(names.index(n) for n in nouns.values())


def test_missing_teacher_weights_name_their_key(captioned, tmp_path):
    """docs/xpm_pseudo_labels.md's command with a teacher checkpoint not on disk."""
    opts = _opts(tmp_path, register_fake_teacher())
    opts += ["MODEL.XPM.TEACHER_WEIGHTS", "teacher/model_final.pth"]
    argv = ["--config-file", str(CONFIGS / "Base-ovseg.yaml"), "--output", str(tmp_path / "s")]
    with pytest.raises(FileNotFoundError, match="MODEL.XPM.TEACHER_WEIGHTS teacher/model_final"):
        main(parse_args([*argv, "--no-progress", *opts]))
    assert not (tmp_path / "s").exists()


def test_a_truncated_image_ends_instance_labelling_with_the_file_and_its_dataset(tmp_path):
    # it ended in all_ok's "RuntimeError: rank 0: ImageDecodeError: ...", raised from a
    # finally over the original: the tool's one-line report (USER_ERRORS) never saw it
    teacher = register_fake_teacher()
    name = "tiny_xpm_train_truncated"  # the module's fixture holds XPM_TRAIN
    with registered_captioned_coco(tmp_path / "datasets", name) as coco:
        image = sorted(coco.rglob("*.jpg"))[0]
        image.write_bytes(image.read_bytes()[:-200])
        argv = ["--config-file", str(CONFIGS / "Base-ovseg.yaml"), "--output", str(tmp_path / "s")]
        argv += ["--dataset", name, "--no-progress"]
        with pytest.raises(DataFileError) as info:
            main(parse_args([*argv, *_opts(tmp_path, teacher)]))
    message = str(info.value)
    assert message.startswith(f"Cannot decode image file '{image}'"), message
    assert f"It is an image of dataset '{name}'" in message
