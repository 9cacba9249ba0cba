"""generate_pseudo_labels: labels from scores, resume after a kill, sharding, refusals."""

import math
import os
import shutil

import numpy as np
import pytest
import torch
from ovseg_testing import NAMES5, FakeTeacher, eval_mapper, make_store, write_random_images
from ovseg_testing.logs import records

from ovseg.pseudo import (
    generate_pseudo_labels,
    labeller_fingerprint,
    scores_to_labels,
    shard_dataset_dicts,
)


def store_bytes(root):
    """Every file of a store's label and confidence folders, by relative path."""
    out = {}
    for sub in ("labels", "confidence"):
        for name in sorted(os.listdir(root / sub)):
            out[f"{sub}/{name}"] = (root / sub / name).read_bytes()
    return out


def test_scores_to_labels_hand_computed():
    # pixel 0: logits (0, ln 3) -> p = (1/4, 3/4); pixel 1: (ln 4, 0) -> (4/5, 1/5);
    # pixel 2: a tie -> the first class, p = 1/2
    scores = torch.tensor([[[0.0, math.log(4), 1.0]], [[math.log(3), 0.0, 1.0]]])
    label, conf = scores_to_labels(scores, threshold=0.0)
    np.testing.assert_array_equal(label, [[1, 0, 0]])
    np.testing.assert_allclose(conf, [[0.75, 0.8, 0.5]], rtol=1e-6)
    label, _ = scores_to_labels(scores, threshold=0.76)
    np.testing.assert_array_equal(label, [[255, 0, 255]])
    label, _ = scores_to_labels(scores, threshold=0.76, ignore_value=65535)
    np.testing.assert_array_equal(label, [[65535, 0, 65535]])

    probs = torch.tensor([[[0.2, 1.3]], [[0.7, -0.1]]])  # key-smoothed: not normalised
    label, conf = scores_to_labels(probs, threshold=0.5, kind="probabilities")
    np.testing.assert_array_equal(label, [[1, 0]])
    np.testing.assert_allclose(conf, [[0.7, 1.0]])
    with pytest.raises(ValueError, match="'softmax' is not one of"):
        scores_to_labels(probs, 0.0, kind="softmax")


def test_shards_are_disjoint_sorted_and_cover_everything(tmp_path):
    dicts = write_random_images(tmp_path / "img", n=5)
    shards = [shard_dataset_dicts(dicts, r, 2) for r in (0, 1)]
    assert [i for i, _ in shards[0]] == ["img_000", "img_002", "img_004"]
    assert [i for i, _ in shards[1]] == ["img_001", "img_003"]
    with pytest.raises(ValueError, match="rank 2 is not in"):
        shard_dataset_dicts(dicts, 2, 2)
    dup = dict(dicts[2])
    with pytest.raises(ValueError, match=f"share image_id '{dup['image_id']}'"):
        shard_dataset_dicts(dicts + [dup], 0, 1)


def test_interrupted_then_resumed_equals_one_uninterrupted_run(tmp_path):
    dicts = write_random_images(tmp_path / "img", n=6)
    mapper = eval_mapper(NAMES5)

    whole = make_store(tmp_path / "whole", threshold=0.3)
    stats = generate_pseudo_labels(FakeTeacher(), dicts, mapper, whole, threshold=0.3)
    assert stats == {"total": 6, "written": 6, "skipped": 0}

    resumed = make_store(tmp_path / "resumed", threshold=0.3)
    killed = FakeTeacher(fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        generate_pseudo_labels(killed, dicts, mapper, resumed, threshold=0.3)
    assert len(resumed.image_ids()) == 4
    again = FakeTeacher()
    resumed = make_store(tmp_path / "resumed", threshold=0.3)  # what a re-run does
    stats = generate_pseudo_labels(again, dicts, mapper, resumed, threshold=0.3)
    assert stats == {"total": 6, "written": 2, "skipped": 4}
    assert len(again.seen) == 2  # done images are not labelled twice

    a, b = store_bytes(tmp_path / "whole"), store_bytes(tmp_path / "resumed")
    assert len(a) == 12 and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    # the threshold did act (the fake teacher is unsure on some pixels, sure on others)
    labels = np.concatenate([whole.read(i)[0].ravel() for i in whole.image_ids()])
    assert 0 < (labels == 255).mean() < 1


def test_labels_agree_with_the_model_scores(tmp_path):
    dicts = write_random_images(tmp_path / "img", n=2)
    store = make_store(tmp_path / "s", threshold=0.25)
    model = FakeTeacher()
    generate_pseudo_labels(model, dicts, eval_mapper(NAMES5), store, threshold=0.25, progress=False)
    inputs = eval_mapper(NAMES5)(dict(dicts[0]))
    with torch.no_grad():
        probs = torch.softmax(model.eval()([inputs])[0]["sem_seg"], dim=0)
    conf, expected = probs.max(dim=0)
    expected[conf < 0.25] = 255
    label, got_conf = store.read(dicts[0]["image_id"])
    assert label.shape == (12, 17)
    np.testing.assert_array_equal(label, expected.numpy())
    np.testing.assert_allclose(got_conf, conf.numpy(), atol=0.5 / 255 + 1e-6)


def test_two_ranks_cover_each_image_exactly_once(tmp_path):
    dicts = write_random_images(tmp_path / "img", n=5)
    store = make_store(tmp_path / "s")
    seen = []
    for rank in (0, 1):
        model = FakeTeacher()
        stats = generate_pseudo_labels(
            model, dicts, eval_mapper(NAMES5), store, threshold=0.0, rank=rank, world_size=2
        )
        assert stats["written"] == stats["total"] == (3 if rank == 0 else 2)
        seen += [os.path.basename(f)[:-4] for f in model.seen]
    assert sorted(seen) == [f"img_{i:03d}" for i in range(5)]  # once each
    assert store.image_ids() == tuple(sorted(seen))
    single = make_store(tmp_path / "single")
    generate_pseudo_labels(FakeTeacher(), dicts, eval_mapper(NAMES5), single, threshold=0.0)
    assert store_bytes(tmp_path / "s") == store_bytes(tmp_path / "single")


def test_refusals_name_the_problem(tmp_path):
    dicts = write_random_images(tmp_path / "img", n=2)
    store = make_store(tmp_path / "s", threshold=0.5)
    with pytest.raises(ValueError, match="threshold 0.4 differs from the store's 0.5"):
        generate_pseudo_labels(FakeTeacher(), dicts, eval_mapper(NAMES5), store, threshold=0.4)
    other = ["cat", "dog", "grass", "sky", "tree"]
    with pytest.raises(ValueError, match="store's vocabulary is 5 classes"):
        generate_pseudo_labels(FakeTeacher(), dicts, eval_mapper(other), store, threshold=0.5)
    with pytest.raises(ValueError, match=r"sem_seg of shape \(4, 12, 17\).*\(5, 12, 17\)"):
        generate_pseudo_labels(FakeTeacher(4), dicts, eval_mapper(NAMES5), store, threshold=0.5)
    assert store.image_ids() == ()


def test_model_mode_is_restored_and_probabilities_are_declared(tmp_path):
    dicts = write_random_images(tmp_path / "img", n=1)
    store = make_store(tmp_path / "s", threshold=0.0)
    model = FakeTeacher(scale=0.001).train()
    model.sem_seg_scores = "probabilities"  # as a meta-arch returning probabilities declares
    generate_pseudo_labels(model, dicts, eval_mapper(NAMES5), store, threshold=0.0)
    assert model.training
    # as probabilities, the confidence is the largest raw score (clipped), not a softmax
    with torch.no_grad():
        scores = model.eval()([eval_mapper(NAMES5)(dict(dicts[0]))])[0]["sem_seg"]
    label, conf = store.read(dicts[0]["image_id"])
    np.testing.assert_array_equal(label, scores.argmax(0).numpy())
    expected = scores.max(0).values.clamp(0, 1).numpy()
    np.testing.assert_allclose(conf, expected, atol=0.5 / 255 + 1e-6)
    softmaxed = torch.softmax(scores, 0).max(0).values.numpy()
    assert np.abs(softmaxed - expected).max() > 0.05


class _ProbabilityTeacher(FakeTeacher):
    """Returns softmax probabilities (whatever it declares)."""

    def forward(self, batched_inputs):
        return [
            {"sem_seg": torch.softmax(o["sem_seg"], 0)} for o in super().forward(batched_inputs)
        ]


@pytest.mark.parametrize(
    "model, declared, warnings",
    [(_ProbabilityTeacher, "logits", 1), (_ProbabilityTeacher, "probabilities", 0),
     (FakeTeacher, "logits", 0)],
)  # fmt: skip
def test_probabilities_declared_as_logits_are_warned_of_once(tmp_path, model, declared, warnings):
    # softmaxed twice, confidences collapse towards 1/K and a threshold drops every pixel
    dicts = write_random_images(tmp_path / "img", n=2)
    teacher = model()
    teacher.sem_seg_scores = declared
    with records("ovseg.pseudo.generate") as got:
        generate_pseudo_labels(
            teacher, dicts, eval_mapper(NAMES5), make_store(tmp_path / "s"), threshold=0.0
        )
    said = [r.getMessage() for r in got if "as probabilities do" in r.getMessage()]
    assert len(said) == warnings, said
    assert all("--scores probabilities" in m for m in said)


def test_labeller_fingerprint_follows_weights_and_settings():
    a, parts = labeller_fingerprint(FakeTeacher(), {"templates": "single"})
    assert parts["clip"] is None and parts["settings"] == {"templates": "single"}
    assert labeller_fingerprint(FakeTeacher(), {"templates": "single"})[0] == a
    assert labeller_fingerprint(FakeTeacher(), {"templates": "vild"})[0] != a
    assert labeller_fingerprint(FakeTeacher(scale=1.0), {"templates": "single"})[0] != a


def test_a_resumed_run_remakes_a_corrupt_label(tmp_path):
    # only images whose stored files match their recorded digests are skipped
    dicts = write_random_images(tmp_path / "img", n=3)
    mapper = eval_mapper(NAMES5)
    store = make_store(tmp_path / "s", threshold=0.3)
    generate_pseudo_labels(FakeTeacher(), dicts, mapper, store, threshold=0.3, progress=False)
    victim = store.image_ids()[1]
    with open(store.path_for(victim), "rb") as f:
        good = f.read()
    with open(store.path_for(victim), "wb") as f:  # same name, other bytes
        f.write(good[:-7] + b"garbage")
    store = make_store(tmp_path / "s", threshold=0.3)  # what a re-run does
    stats = generate_pseudo_labels(
        FakeTeacher(), dicts, mapper, store, threshold=0.3, progress=False
    )
    assert stats == {"total": 3, "written": 1, "skipped": 2}
    with open(store.path_for(victim), "rb") as f:
        assert f.read() == good
    assert store.is_valid(victim)


def test_finalize_skips_a_label_without_a_recorded_digest(tmp_path):
    # a writer killed between a label's rename and its journal line leaves a file without a
    # digest: finalize neither crashes on it nor records it
    dicts = write_random_images(tmp_path / "img", n=2)
    store = make_store(tmp_path / "s", threshold=0.3)
    generate_pseudo_labels(
        FakeTeacher(), dicts, eval_mapper(NAMES5), store, threshold=0.3, progress=False
    )
    first = store.image_ids()[0]
    orphan = os.path.join(os.path.dirname(store.path_for(first)), "orphan.png")
    shutil.copy(store.path_for(first), orphan)
    assert "orphan" in store.image_ids()
    assert store.finalize() == 2
    assert "orphan" not in store.manifest["checksums"]
