"""The instance pseudo-label store: records, digests, kinds, and a resumable generation with
the tiny random CLIP and a fake XPM proposer on a captioned COCO-layout fixture."""

import json

import numpy as np
import pytest
from ovseg_testing.models import tiny_clip_cfg
from ovseg_testing.xpm import XPM_TRAIN, FakeProposer, registered_captioned_coco

from detectron2.data import DatasetCatalog

from ovseg.clip.build import build_clip_teacher
from ovseg.data.captions import CaptionNounMatcher
from ovseg.data.dataset_mappers import InstanceDatasetMapper
from ovseg.pseudo import (
    InstancePseudoLabelStore,
    PseudoInstanceLabeller,
    PseudoLabelStore,
    generate_pseudo_instances,
    store_kind,
)
from ovseg.pseudo.instances import decode_mask, encode_mask

VOCAB = ["person", "dog", "tv"]


def _manifest(**kw):
    return {"fingerprint": "f" * 64, "vocabulary": VOCAB, "threshold": 0.0,
            "dataset": XPM_TRAIN, "unseen": ["dog"], **kw}  # fmt: skip


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    with registered_captioned_coco(tmp_path_factory.mktemp("datasets")) as coco:
        yield coco


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return build_clip_teacher(tiny_clip_cfg(cache_dir=tmp_path_factory.mktemp("cache")))


def _mapper():
    return InstanceDatasetMapper(
        is_train=False, augmentations=[], image_format="RGB", ignore_label=255,
        size_divisibility=-1, vocabulary=VOCAB,
    )  # fmt: skip


class Killed(Exception):
    pass


class DyingProposer(FakeProposer):
    def __init__(self, after):
        super().__init__()
        self.after = after

    def propose(self, batched_inputs):
        if len(self.calls) >= self.after:
            raise Killed("simulated kill")
        return super().propose(batched_inputs)


def _run(clip, store, proposer, mode="crop"):
    labeller = PseudoInstanceLabeller(
        clip, CaptionNounMatcher.coco(VOCAB), VOCAB, templates=["a photo of a {}."],
        region_embedding=mode,
    )  # fmt: skip
    dicts = DatasetCatalog.get(XPM_TRAIN)
    return generate_pseudo_instances(proposer, labeller, dicts, _mapper(), store, progress=False)


@pytest.mark.parametrize("mode", ["crop", "pool"])
def test_generation_is_resumable_and_equals_one_run(captioned, clip, tmp_path, mode):
    whole = InstancePseudoLabelStore.create(str(tmp_path / "whole"), _manifest())
    assert _run(clip, whole, FakeProposer(), mode) == {"total": 2, "written": 2, "skipped": 0}
    assert whole.finalize() == 2

    cut = InstancePseudoLabelStore.create(str(tmp_path / "cut"), _manifest())
    with pytest.raises(Killed):
        _run(clip, cut, DyingProposer(after=1), mode)
    assert len(cut.image_ids()) == 1
    again = FakeProposer()
    reopened = InstancePseudoLabelStore.create(str(tmp_path / "cut"), _manifest())
    assert _run(clip, reopened, again, mode) == {"total": 2, "written": 1, "skipped": 1}
    assert again.calls == [2]  # only the missing image was labelled
    for image_id in whole.image_ids():
        a = (tmp_path / "whole" / "instances" / f"{image_id}.json").read_bytes()
        b = (tmp_path / "cut" / "instances" / f"{image_id}.json").read_bytes()
        assert a == b

    record = whole.read("1")
    assert record["height"] == 32 and record["width"] == 48
    nouns = {tuple(n) for n in record["nouns"]}
    assert {("man", "person"), ("dog", "dog"), ("television", "tv")} <= nouns
    dog = [i for i in record["instances"] if i.category == "dog"]
    assert len(dog) == 1 and dog[0].category_id == 1
    assert 0 <= dog[0].proposal < 3 and 0 < dog[0].score < 1  # never the empty proposal
    assert decode_mask(dog[0].mask).sum() == 24 * 16
    assert len(record["instances"]) == len(record["nouns"])  # no threshold, no NMS


def test_corrupt_records_are_named_and_relabelled(captioned, clip, tmp_path):
    store = InstancePseudoLabelStore.create(str(tmp_path / "s"), _manifest())
    _run(clip, store, FakeProposer(), "pool")
    store.finalize()
    path = tmp_path / "s" / "instances" / "1.json"
    path.write_text(path.read_text().replace('"dog"', '"cat"'))
    store = InstancePseudoLabelStore.open(str(tmp_path / "s"))
    with pytest.raises(ValueError, match="does not match its checksum"):
        store.read("1")
    proposer = FakeProposer()
    assert _run(clip, store, proposer, "pool")["written"] == 1 and proposer.calls == [1]


def test_kinds_do_not_mix(tmp_path):
    InstancePseudoLabelStore.create(str(tmp_path / "i"), _manifest())
    assert store_kind(str(tmp_path / "i")) == "instances"
    with pytest.raises(ValueError, match="holds instances pseudo-labels, not semantic"):
        PseudoLabelStore.open(str(tmp_path / "i"))
    with pytest.raises(ValueError, match="made differently"):
        PseudoLabelStore.create(str(tmp_path / "i"), _manifest())
    PseudoLabelStore.create(str(tmp_path / "p"), _manifest())
    assert store_kind(str(tmp_path / "p")) == "semantic"
    with pytest.raises(ValueError, match="holds semantic pseudo-labels, not instances"):
        InstancePseudoLabelStore.open(str(tmp_path / "p"))
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert "kind" not in manifest  # semantic stores made before kinds stay readable


def test_records_are_checked_when_written(tmp_path):
    store = InstancePseudoLabelStore.create(str(tmp_path / "s"), _manifest())
    mask = encode_mask(np.eye(4, dtype=bool))
    good = {"noun": "puppy", "category": "dog", "category_id": 1, "box": [0, 0, 1, 1],
            "mask": mask, "cosine": 0.1, "score": 0.5, "proposal": 0}  # fmt: skip
    store.write("a", {"height": 4, "width": 4, "instances": [good]})
    assert store.read("a")["instances"][0].noun == "puppy"
    with pytest.raises(ValueError, match="not that entry"):
        store.write("b", {"height": 4, "width": 4, "instances": [{**good, "category_id": 0}]})
    with pytest.raises(ValueError, match="pseudo mask of size"):
        store.write("c", {"height": 5, "width": 4, "instances": [good]})
    with pytest.raises(ValueError, match="lacks"):
        store.write("d", {"height": 4, "width": 4, "instances": [{"noun": "x"}]})
