"""Synonyms, augmented vocabularies and a background by a threshold
(ovseg/modeling/vocabulary_scores.py), on hand-computed cases, and in a model's inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import random_image, tiny_maskclip_cfg

from detectron2.modeling import build_model

from ovseg.modeling.vocabulary_scores import (
    VocabularyPlan,
    augment_names,
    defer_to_smaller_classes,
    fold_augmented,
    insert_background,
    max_over_synonyms,
    mean_synonym_embeddings,
    synonym_groups,
)
from ovseg.vocab import Vocabulary


def test_synonym_groups():
    assert synonym_groups(["sky", "tree"]) is None
    assert synonym_groups(["pickup truck, truck", "sky"]) == (
        ("pickup truck", "truck", "sky"), [[0, 1], [2]])  # fmt: skip
    assert synonym_groups(["road, route, road", "sky"]) == (("road", "route", "sky"), [[0, 1], [2]])
    # a word naming two classes (ADE's "screen") is scored once and counts for both
    assert synonym_groups(["screen door, screen", "blind, Screen"]) == (
        ("screen door", "screen", "blind"), [[0, 1], [2, 1]])  # fmt: skip
    # beside the class "screen" itself, the maximum leaves "screen" to it alone
    ade = ["screen door, screen", "screen", "blind, screen"]
    words, members = synonym_groups(ade)
    assert members == [[0, 1], [1], [2, 1]]
    assert defer_to_smaller_classes(members) == [[0], [1], [2]]
    # a class of shared words only, and classes sharing a word none is alone
    assert defer_to_smaller_classes([[0, 1], [0], [1]]) == [[0, 1], [0], [1]]
    assert defer_to_smaller_classes([[0, 1], [2, 1]]) == [[0, 1], [2, 1]]
    # a smaller class of two words takes both from a larger one
    assert defer_to_smaller_classes([[0, 1, 2], [1, 2], [3]]) == [[0], [1, 2], [3]]


def test_max_over_synonyms_by_hand():
    # 3 synonyms (owners 0, 0, 1) at 2 pixels
    scores = torch.tensor([[1.0, 5.0], [3.0, 2.0], [4.0, 0.0]]).view(1, 3, 1, 2)
    out = max_over_synonyms(scores, [[0, 1], [2]])
    assert out.view(2, 2).tolist() == [[3.0, 5.0], [4.0, 0.0]]
    shared = max_over_synonyms(scores, [[0, 1], [2, 1]])
    assert shared.view(2, 2).tolist() == [[3.0, 5.0], [4.0, 2.0]]


def test_mean_synonym_embeddings_by_hand():
    table = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8]}

    def encode(words):
        return torch.tensor([table[w] for w in words])

    out = mean_synonym_embeddings(encode, ["a, b", "c"])
    s = 2**-0.5
    torch.testing.assert_close(out, torch.tensor([[s, s], [0.6, 0.8]]))
    torch.testing.assert_close(mean_synonym_embeddings(encode, ["c", "a"]), encode(["c", "a"]))
    ade = [n for n in Vocabulary.builtin("ade150").names]
    assert synonym_groups(ade) is not None  # ADE's synonyms, some shared, are accepted


def test_background_threshold_by_hand():
    # pixels: best 0.6 (class 0), best exactly 0.5 (class 1), best 0.4 -> background
    probs = torch.tensor([[0.6, 0.5, 0.4], [0.4, 0.5, 0.35], [0.0, 0.0, 0.25]]).T
    probs = probs.T.reshape(1, 3, 1, 3)  # (B, K=3, 1, 3 pixels)
    out = insert_background(probs, 0, 0.5)
    assert out.shape == (1, 4, 1, 3)
    assert out[0, 0, 0].tolist() == [0.0, 0.0, 0.5]
    assert out.argmax(dim=1).view(-1).tolist() == [1, 1, 0]  # ties at the threshold: the class
    assert insert_background(probs, 3, 0.5).argmax(dim=1).view(-1).tolist() == [0, 0, 3]
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        insert_background(probs, 0, 1.5)


def test_augment_and_fold():
    names = augment_names(["person, man", "grass", "my robot"], "coco171")
    assert names[:3] == ("person, man", "grass", "my robot")
    rest = {n.lower() for n in names[3:]}
    assert "person" not in rest and "grass" not in rest and "car" in rest
    assert len(names) == 3 + 171 - 2
    probs = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25]).view(1, 5, 1, 1)
    assert fold_augmented(probs, 3).view(-1).tolist() == pytest.approx([0.1, 0.2, 0.3, 0.25])
    with pytest.raises(ValueError, match="'other'"):
        augment_names(["other", "cat"], "voc20")
    # a vocabulary that already covers the augmenting one: nothing added, "other" never wins
    voc = augment_names(list(Vocabulary.builtin("voc20").names), "voc20")
    assert voc == Vocabulary.builtin("voc20").names
    folded = fold_augmented(torch.full((1, 20, 2, 2), 0.05), 20)
    assert folded.shape == (1, 21, 2, 2) and (folded[:, 20] == 0).all()


def test_plan_names_and_probabilities():
    plan = VocabularyPlan.make(["cat", "background", "dog"], "voc20", 0.5)
    assert plan.names == ("cat", "background", "dog", "other")
    assert plan.model_names[:2] == ("cat", "dog") and "background" not in plan.model_names
    assert plan.num_user == 2 and not plan.identity
    # cat 0.3, dog 0.2, an added class 0.45: best 0.45 < 0.5 -> background
    probs = torch.zeros(1, len(plan.model_names), 1, 2)
    probs[0, :3, 0, 0] = torch.tensor([0.3, 0.2, 0.45])
    probs[0, :3, 0, 1] = torch.tensor([0.1, 0.2, 0.7])  # the added class wins -> other
    labels = plan.probabilities(probs).argmax(dim=1).view(-1).tolist()
    assert [plan.names[i] for i in labels] == ["background", "other"]
    assert VocabularyPlan.make(["cat", "dog"], None, 0.3).names == ("background", "cat", "dog")
    assert VocabularyPlan.make(["cat", "dog"]).identity


@pytest.fixture(scope="module", params=[False, True], ids=["probabilities", "logits"])
def maskclip(tmp_path_factory, request):
    """The shipped MaskCLIP config, tiny, with probability or (UPSAMPLE_LOGITS) logit scores."""
    cfg = tiny_maskclip_cfg(tmp_path_factory.mktemp("cache"))
    cfg.MODEL.OVSEG.SYNONYM_MERGE = "max"
    cfg.MODEL.MASKCLIP.UPSAMPLE_LOGITS = request.param
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.sem_seg_scores == ("logits" if request.param else "probabilities")
    return model


def _scores(model, names):
    inp = {"image": random_image(32, 32), "vocabulary": list(names)}
    with torch.no_grad():
        return model([inp])[0]["sem_seg"]


def test_model_max_merge_is_max_over_synonym_scores(maskclip):
    flat = _scores(maskclip, ["cat", "kitten", "dog"])
    merged = _scores(maskclip, ["cat, kitten", "dog"])
    torch.testing.assert_close(merged[0], torch.maximum(flat[0], flat[1]))
    torch.testing.assert_close(merged[1], flat[2])


def test_model_mean_merge_embeds_the_mean(maskclip):
    maskclip.synonym_merge = "mean"
    try:
        text = maskclip.text_embeddings(["cat, kitten", "dog"])
        words = maskclip.text_embeddings(["cat", "kitten", "dog"])
        torch.testing.assert_close(text[0], F.normalize(words[0] + words[1], dim=0))
        merged = _scores(maskclip, ["cat, kitten", "dog"])
        assert merged.shape[0] == 2
    finally:
        maskclip.synonym_merge = "max"


def test_model_background_threshold(maskclip):
    fg = _scores(maskclip, ["cat", "dog"])
    logits = maskclip.sem_seg_scores == "logits"
    probs = fg.softmax(0) if logits else fg
    threshold = float(probs.max(0).values.median())  # so that both kinds of pixel occur
    maskclip.background_threshold = threshold
    try:
        out = _scores(maskclip, ["cat", "background", "dog"])
    finally:
        maskclip.background_threshold = 0.0
    expected = insert_background(probs[None], 1, threshold)[0]
    if logits:  # logits stay logits: the log of the probabilities
        expected = expected.clamp_min(1e-12).log()
    torch.testing.assert_close(out, expected)
    labels = out.argmax(0)
    assert ((labels == 1) == (probs.max(0).values < threshold)).all()
    assert 0 < int((labels == 1).sum()) < labels.numel()  # both kinds of pixel occur


def test_vocabulary_syntax_reaches_the_model_names():
    names = Vocabulary.from_string("pickup truck,truck ; sky").names
    assert names == ("pickup truck, truck", "sky")


def test_zegclip_calibrates_every_synonym_of_a_seen_class(tmp_path):
    from ovseg_testing import tiny_zegclip_cfg

    from ovseg.modeling.meta_arch.zegclip import ZegCLIP

    kwargs = ZegCLIP.from_config(tiny_zegclip_cfg(tmp_path))
    model = ZegCLIP(**{**kwargs, "seen_classes": ["cat, kitten"], "unseen_classes": ["dog"]})
    flags = model._flags(("cat", "kitten", "dog"), model.seen_classes)
    assert flags.tolist() == [True, True, False]
