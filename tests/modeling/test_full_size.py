"""Labels at a large size from scores at the input size, a few classes at a time: the argmax,
confidence, plan and instance/panoptic resizing of the whole (K, H, W) tensor, without it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovseg.modeling.full_size import ScoresAtSize, labels_at_size, scores_at_size
from ovseg.modeling.vocabulary_scores import VocabularyPlan
from ovseg.pseudo.labels import pixel_labels

SIZE = (37, 53)  # from (9, 13): not a whole multiple


def _whole(scores: torch.Tensor, kind: str, plan=None):
    """What the demo and the API computed before: everything at the output size at once."""
    probs = F.interpolate(scores[None], size=SIZE, mode="bilinear", align_corners=False)[0]
    if kind == "logits":
        probs = probs.softmax(dim=0)
    if plan is not None:
        probs = plan.probabilities(probs[None])[0]
    label, confidence = pixel_labels(probs, threshold=0.0, ignore_value=255, kind="probabilities")
    return probs, label, confidence


def _clear(probs: torch.Tensor) -> torch.Tensor:
    """Pixels whose best class leads the next by more than float rounding."""
    top2 = probs.topk(2, dim=0).values
    return top2[0] - top2[1] > 1e-6


@pytest.mark.parametrize("kind", ["logits", "probabilities"])
@pytest.mark.parametrize("classes_per_chunk", [1, 2, 3, 7])
def test_chunked_labels_are_the_whole_tensors(kind, classes_per_chunk):
    torch.manual_seed(0)
    scores = torch.randn(7, 9, 13) * 3
    if kind == "probabilities":
        scores = scores.sigmoid()
    probs, want_label, want_conf = _whole(scores, kind)
    label, confidence = labels_at_size(
        scores, SIZE, kind=kind, max_elements=classes_per_chunk * SIZE[0] * SIZE[1]
    )
    assert label.shape == SIZE and label.dtype == torch.int64
    assert confidence.shape == SIZE and confidence.dtype == torch.float32
    clear = _clear(probs)
    assert clear.float().mean() > 0.99
    assert torch.equal(label[clear], want_label[clear])
    torch.testing.assert_close(confidence, want_conf, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores_at_size(scores, SIZE, kind=kind), probs)


def test_a_chunk_smaller_than_one_class_still_takes_one_class():
    scores = torch.randn(3, 9, 13)
    label, _ = labels_at_size(scores, SIZE, kind="logits", max_elements=1)
    assert torch.equal(label, _whole(scores, "logits")[1])


def test_ties_go_to_the_first_class_across_chunks():
    scores = torch.zeros(5, 4, 4)
    scores[3] = 1.0
    scores[4] = 1.0  # ties with class 3, in another chunk
    label, confidence = labels_at_size(scores, (8, 8), kind="probabilities", max_elements=64)
    assert (label == 3).all() and (confidence == 1.0).all()
    flat = torch.zeros(4, 4, 4)  # every class ties: the first, as argmax
    label, confidence = labels_at_size(flat, (8, 8), kind="logits", max_elements=64)
    assert (label == 0).all()
    torch.testing.assert_close(confidence, torch.full((8, 8), 0.25))


def test_the_same_size_is_the_argmax_itself():
    scores = torch.randn(6, 9, 13)
    label, confidence = labels_at_size(scores, (9, 13), kind="logits", max_elements=2 * 9 * 13)
    assert torch.equal(label, scores.argmax(dim=0))
    torch.testing.assert_close(confidence, scores.softmax(dim=0).amax(dim=0))


@pytest.mark.parametrize("kind", ["logits", "probabilities"])
def test_an_augmented_vocabulary_and_a_background_by_a_threshold(kind):
    torch.manual_seed(1)
    scores = torch.randn(5, 9, 13)
    if kind == "probabilities":
        scores = scores.sigmoid()
    # a threshold between the confidences, so both the background and the classes win pixels
    plain = _whole(scores, kind)[2]
    threshold = float(plain.median())
    plan = VocabularyPlan.make(
        ["cat", "background", "dog"], augment="tree,car,sky", background_threshold=threshold
    )
    assert plan.names == ("cat", "background", "dog", "other")
    assert len(plan.model_names) == 5
    probs, want_label, want_conf = _whole(scores, kind, plan)
    label, confidence = labels_at_size(scores, SIZE, kind=kind, plan=plan, max_elements=2 * 37 * 53)
    clear = _clear(probs) & ((plain - threshold).abs() > 1e-6)
    assert clear.float().mean() > 0.95
    assert torch.equal(label[clear], want_label[clear])
    assert {0, 1, 2, 3} <= set(label.unique().tolist())  # "other" and the background win too
    torch.testing.assert_close(confidence, want_conf, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores_at_size(scores, SIZE, kind=kind, plan=plan), probs)


@pytest.mark.parametrize("kind", ["logits", "probabilities"])
@pytest.mark.parametrize("words", [None, ("cat", "background", "dog")])
def test_some_classes_maps_are_the_whole_tensors_rows(kind, words):
    """Heat maps of a few classes (the web app's) without the other classes' maps: a user's
    class, "other" (its best added class) and the background (the threshold where it wins)."""
    torch.manual_seed(2)
    scores = torch.randn(4 if words is None else 5, 9, 13) * 2
    if kind == "probabilities":
        scores = scores.sigmoid()
    plan, threshold = None, float(_whole(scores, kind)[2].median())
    if words is not None:
        plan = VocabularyPlan.make(words, augment="tree,car,sky", background_threshold=threshold)
    at = ScoresAtSize(scores, SIZE, kind=kind, plan=plan, max_elements=2 * 37 * 53)
    whole = _whole(scores, kind, plan)[0]
    order = [3, 0, 1, 2] if plan is not None else [2, 0, 3]
    got = at.probabilities(order)
    assert got.shape == (len(order), *SIZE)
    torch.testing.assert_close(got, whole[order], rtol=1e-5, atol=1e-6)
    if plan is not None:
        # the background: the threshold where it wins, else 0
        assert set(got[2].unique().tolist()) == {0.0, torch.tensor(threshold).item()}
    assert at.probabilities([]).shape == (0, *SIZE)
    with pytest.raises(ValueError, match=r"class indices \[9\] are outside"):
        at.probabilities([0, 9])


@pytest.mark.parametrize(
    "scores, size, kind, plan, message",
    [
        (torch.zeros(9, 13), SIZE, "logits", None, r"\(K, h, w\) tensor, got \(9, 13\)"),
        (torch.zeros(2, 9, 13), SIZE, "softmax", None, "score kind 'softmax'"),
        (torch.zeros(2, 9, 13), (0, 5), "logits", None, "output size must be positive"),
        (torch.zeros(2, 9, 13), SIZE, "logits", VocabularyPlan.make(["a", "b", "c"]), "plan"),
    ],
)
def test_bad_arguments_are_refused_clearly(scores, size, kind, plan, message):
    with pytest.raises(ValueError, match=message):
        labels_at_size(scores, size, kind=kind, plan=plan)


def test_other_of_an_augmentation_that_added_nothing_is_zero():
    plan = VocabularyPlan.make(["cat", "dog"], augment="cat,dog")
    assert plan.names == ("cat", "dog", "other") and len(plan.model_names) == 2
    scores = torch.randn(2, 9, 13)
    at = ScoresAtSize(scores, SIZE, kind="logits", plan=plan)
    got = at.probabilities([2, 0])
    torch.testing.assert_close(got, _whole(scores, "logits", plan)[0][[2, 0]])
    assert (got[0] == 0).all()


def test_all_probabilities_never_share_the_held_scores():
    scores = torch.rand(3, 9, 13)  # probabilities at the output size: nothing to resize
    at = ScoresAtSize(scores, (9, 13), kind="probabilities")
    probs = at.probabilities()
    torch.testing.assert_close(probs, scores)
    probs.zero_()
    torch.testing.assert_close(at.probabilities([1])[0], scores[1])
    assert scores.abs().sum() > 0


def test_the_scores_at_another_size_are_made_from_the_model_scores():
    """at_size: a display's maps from the model's scores, as if that were the image's size."""
    torch.manual_seed(0)
    scores = torch.randn(5, 6, 7)
    plan = VocabularyPlan.make(["cat", "background", "dog"], augment="tree,car,sky",
                               background_threshold=0.3)  # fmt: skip
    held = ScoresAtSize(scores, (30, 40), kind="logits", plan=plan, max_elements=2400)
    small = held.at_size((12, 9))
    fresh = ScoresAtSize(scores, (12, 9), kind="logits", plan=plan)
    assert held.at_size((30, 40)) is held and small.size == (12, 9)
    torch.testing.assert_close(small.probabilities([0, 1, 3]), fresh.probabilities([0, 1, 3]))
    assert torch.equal(small.labels()[0], fresh.labels()[0])
