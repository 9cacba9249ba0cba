"""The pseudo-label store: training refuses another teacher's store naming the differing
field; stored files carry checksums, verified when generation resumes (bad files re-made)
and when they are read (named); out-of-range stored labels are an error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ovseg_testing import (
    ADE,
    NAMES5,
    FakeTeacher,
    eval_mapper,
    make_store,
    tiny_maskclip_plus_cfg,
    write_random_images,
    write_unseen_fixture,
)
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg.data import build_dataset_mapper
from ovseg.engine.pseudo_labelling import build_labeller, labeller_manifest
from ovseg.pseudo import (
    PseudoLabelStore,
    attach_pseudo_labels,
    expected_pseudo_labels,
    generate_pseudo_labels,
    pseudo_labelled_dataset_dicts,
)
from ovseg.pseudo.checksums import ChecksumJournal, file_digest

DATASET = "reliability_store_fixture_train"


@pytest.fixture
def registered(tmp_path):
    dicts = write_unseen_fixture(tmp_path / "data", n=2)
    DatasetCatalog.register(DATASET, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(DATASET).set(
        stuff_classes=list(ADE.names), unseen_classes=list(ADE.unseen), ignore_label=255
    )
    yield dicts
    DatasetCatalog.remove(DATASET)
    MetadataCatalog.remove(DATASET)


def _student_cfg(tmp_path, *opts):
    return tiny_maskclip_plus_cfg(
        tmp_path / "cache", "DATASETS.TRAIN", f"('{DATASET}',)",
        "MODEL.OVSEG.ZERO_SHOT_SETTING", "transductive",
        "DATASETS.PSEUDO_LABELS", str(tmp_path / "store"), *opts,
    )  # fmt: skip


def _generated_manifest(tmp_path, *teacher_opts) -> dict:
    """The manifest tools/generate_pseudo_labels.py writes for the student config's teacher
    (its documented command: META_ARCHITECTURE MaskCLIP, the scored classes), with
    ``teacher_opts`` changed."""
    student = _student_cfg(tmp_path)
    scored = tmp_path / "scored.json"  # ADE names hold commas: a JSON list
    scored.write_text(json.dumps(list(expected_pseudo_labels(student).scored)))
    cfg = _student_cfg(
        tmp_path, "MODEL.META_ARCHITECTURE", "MaskCLIP",
        "MODEL.OVSEG.TEST_VOCABULARY", str(scored), *teacher_opts,
    )  # fmt: skip
    labeller = build_labeller(cfg, DATASET)
    return labeller_manifest(cfg, labeller, threshold=0.0)


def test_store_of_the_configs_teacher_is_accepted(tmp_path, registered):
    manifest = _generated_manifest(tmp_path)
    store = PseudoLabelStore.create(str(tmp_path / "store"), manifest)
    for d in registered:
        h, w = np.asarray(Image.open(d["file_name"])).shape[:2]
        store.write(d["image_id"], np.zeros((h, w), int), np.ones((h, w)))
    assert len(pseudo_labelled_dataset_dicts(_student_cfg(tmp_path))) == 2


@pytest.mark.parametrize(
    "opts, field",
    [
        (("INPUT.SIZE_DIVISIBILITY", "32"), "teacher.settings.input.size_divisibility"),
        (("MODEL.MASKCLIP.KEY_SMOOTHING", "False"), "teacher.settings.method.KEY_SMOOTHING"),
        (("INPUT.MIN_SIZE_TEST", "64"), "teacher.settings.input.min_size_test"),
    ],
)
def test_store_of_another_teacher_is_refused_naming_the_field(tmp_path, registered, opts, field):
    PseudoLabelStore.create(str(tmp_path / "store"), _generated_manifest(tmp_path, *opts))
    with pytest.raises(ValueError, match="does not fit") as info:
        pseudo_labelled_dataset_dicts(_student_cfg(tmp_path))
    assert field in str(info.value)


def test_store_resized_by_pil_is_refused_to_an_opencv_config(tmp_path, registered):
    # the field is recorded for OpenCV only: stores made before it stay valid for PIL configs
    PseudoLabelStore.create(str(tmp_path / "store"), _generated_manifest(tmp_path))
    with pytest.raises(ValueError, match="teacher.settings.input.resize_backend is '<absent>'"):
        pseudo_labelled_dataset_dicts(_student_cfg(tmp_path, "INPUT.RESIZE_BACKEND", "opencv"))


def test_store_of_rounded_sizes_is_refused_to_a_truncating_config(tmp_path, registered):
    # maskrcnn_benchmark's sizes (XPM's) differ by a pixel: recorded only when not "round"
    PseudoLabelStore.create(str(tmp_path / "store"), _generated_manifest(tmp_path))
    with pytest.raises(ValueError, match="teacher.settings.input.resize_rounding is '<absent>'"):
        pseudo_labelled_dataset_dicts(_student_cfg(tmp_path, "INPUT.RESIZE_ROUNDING", "truncate"))


def test_maskclip_grid_and_logit_switches_enter_the_fingerprint_where_they_act(tmp_path):
    from ovseg.pseudo.labeller import labeller_settings

    def method(*opts):
        cfg = _student_cfg(tmp_path, "MODEL.META_ARCHITECTURE", "MaskCLIP", *opts)
        return labeller_settings(cfg)["method"]

    assert "UPSAMPLE_LOGITS" not in method()  # off: stores made before the key still fit
    # key smoothing gives probabilities whatever the key says: the same labels
    assert "UPSAMPLE_LOGITS" not in method("MODEL.MASKCLIP.UPSAMPLE_LOGITS", "True")
    on = method("MODEL.MASKCLIP.UPSAMPLE_LOGITS", "True", "MODEL.MASKCLIP.KEY_SMOOTHING", "False")
    assert on["UPSAMPLE_LOGITS"] is True
    assert "STRETCH_GRID" not in method()
    assert method("MODEL.MASKCLIP.STRETCH_GRID", "True")["STRETCH_GRID"] is True
    assert "PAD_TO_STRIDE" not in method()  # padded: as every store before the key
    assert method("MODEL.MASKCLIP.PAD_TO_STRIDE", "False")["PAD_TO_STRIDE"] is False


def test_store_of_other_clip_weights_is_refused(tmp_path, registered):
    manifest = _generated_manifest(tmp_path)
    assert manifest["teacher"]["clip_weights"] == "random"  # the tiny CLIP has no weights
    manifest["teacher"]["clip_weights"] = "sha256:" + "0" * 64  # a checkpoint's
    PseudoLabelStore.create(str(tmp_path / "store"), manifest)
    with pytest.raises(ValueError, match="teacher.clip_weights is 'sha256:0000"):
        pseudo_labelled_dataset_dicts(_student_cfg(tmp_path))


def _generated_store(tmp_path):
    dicts = write_random_images(tmp_path / "img", n=4)
    store = make_store(tmp_path / "store", dataset="fake_train")
    generate_pseudo_labels(FakeTeacher(), dicts, eval_mapper(NAMES5), store, threshold=0.0)
    store.finalize()
    return dicts, store


def _corrupt(path: str) -> bytes:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return data


def test_manifest_carries_a_checksum_per_file(tmp_path):
    dicts, store = _generated_store(tmp_path)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert sorted(manifest["checksums"]) == sorted(d["image_id"] for d in dicts)
    label, conf = manifest["checksums"][dicts[0]["image_id"]]
    assert label == file_digest(store.path_for(dicts[0]["image_id"]))
    assert conf == file_digest(store.confidence_path_for(dicts[0]["image_id"]))


@pytest.mark.parametrize("which", ["label", "confidence"])
def test_corrupt_file_is_remade_when_generation_resumes(tmp_path, which):
    dicts, store = _generated_store(tmp_path)
    image_id = dicts[0]["image_id"]
    path = store.path_for(image_id) if which == "label" else store.confidence_path_for(image_id)
    good = _corrupt(path)

    store = make_store(tmp_path / "store", dataset="fake_train")  # what a re-run does
    again = FakeTeacher()
    stats = generate_pseudo_labels(again, dicts, eval_mapper(NAMES5), store, threshold=0.0)
    assert stats["written"] == 1 and len(again.seen) == 1
    assert open(path, "rb").read() == good


def test_corrupt_file_is_named_when_read(tmp_path):
    dicts, store = _generated_store(tmp_path)
    image_id = dicts[0]["image_id"]
    _corrupt(store.path_for(image_id))
    store = PseudoLabelStore.open(str(tmp_path / "store"))
    with pytest.raises(ValueError, match=f"{image_id}.png.*does not match its checksum"):
        store.read(image_id)
    attached = attach_pseudo_labels(dicts, store)
    mapper = eval_mapper(NAMES5)
    sample = next(d for d in attached if d["image_id"] == image_id)
    with pytest.raises(ValueError, match=f"{image_id}.png.*does not match its checksum"):
        mapper(dict(sample))


def test_out_of_range_stored_label_is_an_error(tmp_path, registered):
    manifest = _generated_manifest(tmp_path)
    store = PseudoLabelStore.create(str(tmp_path / "store"), manifest)
    k = len(store.vocabulary)
    for d in registered:
        h, w = np.asarray(Image.open(d["file_name"])).shape[:2]
        store.write(d["image_id"], np.zeros((h, w), int), np.ones((h, w)))
    store.finalize()
    # a label file holding a value past the store's classes (not the ignore value), with
    # its digest recorded as a faulty writer would have
    image_id = registered[0]["image_id"]
    path = store.path_for(image_id)
    label = np.asarray(Image.open(path)).copy()
    label[:4, :4] = k + 3
    Image.fromarray(label).save(path)
    ChecksumJournal(store.root).append(
        image_id, (file_digest(path), file_digest(store.confidence_path_for(image_id)))
    )

    store = PseudoLabelStore.open(store.root)
    with pytest.raises(ValueError, match=f"values \\[{k + 3}\\]"):
        store.read(image_id)
    cfg = _student_cfg(tmp_path, "INPUT.CROP.ENABLED", "False")
    attached = pseudo_labelled_dataset_dicts(cfg)
    mapper = build_dataset_mapper(cfg, True)
    sample = next(d for d in attached if d["image_id"] == image_id)
    with pytest.raises(ValueError, match=f"{image_id}.png.* values \\[{k + 3}\\]"):
        mapper(dict(sample))
