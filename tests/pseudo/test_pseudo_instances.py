"""XPM's pseudo instances: each caption noun's best proposal, with hand-built embeddings."""

import math

import numpy as np
import pytest
import torch
from ovseg_testing.xpm import HEIGHT, OBJECTS, WIDTH, FakeProposer, HandCLIP, object_mask

from ovseg.data.captions import CaptionNounMatcher
from ovseg.pseudo import PseudoInstance, PseudoInstanceLabeller
from ovseg.pseudo.instances import decode_mask, encode_mask, proposals_at_size

VOCAB = ["person", "dog", "tv"]  # the full vocabulary; "dog" is unseen (no base mask)
# the proposals of image 1 are stripes starting at columns 0 (person), 16 (dog), 32 (tv)
REGIONS = {0: [1.0, 0.1, 0.0], 16: [0.2, 0.9, 0.3], 32: [0.0, 0.2, 1.0]}
TEXTS = {
    "man": [0.9, 0.1, 0.0],
    "dog": [0.1, 1.0, 0.0],
    "television": [0.0, 0.0, 1.0],
    "person": [1.0, 0.0, 0.0],
    "tv": [0.0, 0.1, 1.0],
}


def _labeller(**kw):
    matcher = CaptionNounMatcher.coco(VOCAB)
    return PseudoInstanceLabeller(HandCLIP(TEXTS, REGIONS), matcher, VOCAB, templates=["{}"], **kw)


def _proposals():
    inputs = {"image_id": 1, "height": HEIGHT, "width": WIDTH}
    return FakeProposer().propose([inputs])[0]


def _cos(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_an_unseen_noun_gets_the_mask_of_its_best_matching_proposal():
    image = torch.zeros(3, HEIGHT, WIDTH)
    out = _labeller()(image, ["A man walking his dogs past a television."], _proposals())
    assert [(p.noun, p.category, p.category_id) for p in out] == [
        ("man", "person", 0),
        ("dog", "dog", 1),
        ("television", "tv", 2),
    ]
    dog = out[1]
    assert dog.proposal == 1  # the stripe at columns 16-31, the best of the three by hand
    assert np.array_equal(decode_mask(dog.mask), object_mask(OBJECTS[1][1][1]))
    assert dog.box == (16.0, 4.0, 32.0, 28.0)
    cos = max(_cos(TEXTS["dog"], r) for r in REGIONS.values())
    assert (
        dog.cosine == pytest.approx(cos, abs=1e-6) == pytest.approx(_cos(TEXTS["dog"], REGIONS[16]))
    )
    assert dog.score == pytest.approx(1 / (1 + math.exp(-cos)), abs=1e-6)  # sigmoid, as XPM


def test_no_threshold_no_nms_by_default_and_an_optional_score_cut():
    image = torch.zeros(3, HEIGHT, WIDTH)
    caps = ["A man and a woman watching tv."]  # two phrases of one class: both kept
    texts = {**TEXTS, "woman": [0.8, 0.0, 0.2]}
    labeller = PseudoInstanceLabeller(
        HandCLIP(texts, REGIONS), CaptionNounMatcher.coco(VOCAB), VOCAB, templates=["{}"]
    )
    out = labeller(image, caps, _proposals())
    assert [(p.noun, p.proposal) for p in out] == [("man", 0), ("woman", 0), ("tv", 2)]
    cut = _cos(texts["woman"], REGIONS[0])
    strict = PseudoInstanceLabeller(
        HandCLIP(texts, REGIONS), CaptionNounMatcher.coco(VOCAB), VOCAB, templates=["{}"],
        score_threshold=1 / (1 + math.exp(-cut)) + 1e-4,
    )  # fmt: skip
    assert [p.noun for p in strict(image, caps, _proposals())] == ["man", "tv"]


def test_class_text_region_mode_and_empty_cases():
    image = torch.zeros(3, HEIGHT, WIDTH)
    labeller = _labeller(text="class", region_embedding="pool")
    out = labeller(image, ["A man on a sofa."], _proposals())  # "sofa": couch, not in VOCAB
    assert [(p.noun, p.category) for p in out] == [("man", "person")]
    assert out[0].cosine == pytest.approx(_cos(TEXTS["person"], REGIONS[0]), abs=1e-6)
    assert labeller.clip.modes == ["pool"]
    assert labeller(image, ["An empty street."], _proposals()) == []
    nothing = _proposals()[3:]  # only the proposal whose mask is all below 0.5
    assert labeller(image, ["A man."], nothing) == []


def test_teacher_region_embeddings_are_matched_and_every_proposal_is_a_candidate():
    # XPM matches nouns to its detector's own region embeddings (st_generalized_rcnn.py:
    # 226-247): here the proposer's pred_embeddings; CLIP's image side is never asked
    image = torch.zeros(3, HEIGHT, WIDTH)
    proposals = _proposals()
    # by hand: the empty-mask proposal (index 3) is the dog's best, the tv stripe the man's
    proposals.pred_embeddings = torch.tensor(
        [[0.0, 0.0, 1.0], [0.1, 0.2, 0.9], [0.9, 0.0, 0.1], [0.0, 1.0, 0.0]]
    )
    labeller = _labeller(region_embedding="teacher")
    out = labeller(image, ["A man walking his dog."], proposals)
    assert [(p.noun, p.proposal) for p in out] == [("man", 2), ("dog", 3)]
    assert labeller.clip.modes == []
    assert out[1].cosine == pytest.approx(_cos(TEXTS["dog"], [0.0, 1.0, 0.0]), abs=1e-6)
    assert not decode_mask(out[1].mask).any()  # its mask is empty, as officially possible
    # cosines, whatever the rows' norms: a raw product would give the long tv row the dog
    # and the long person row the man
    proposals.pred_embeddings = torch.tensor(
        [[0.0, 0.0, 10.0], [0.1, 0.2, 0.9], [9.0, 0.0, 1.0], [0.0, 0.5, 0.0]]
    )
    scaled = labeller(image, ["A man walking his dog."], proposals)
    assert [(p.noun, p.proposal) for p in scaled] == [("man", 2), ("dog", 3)]
    assert scaled[1].cosine == pytest.approx(out[1].cosine, abs=1e-6)
    moved = proposals_at_size(proposals, HEIGHT // 2, WIDTH // 2)
    assert torch.equal(moved.pred_embeddings, proposals.pred_embeddings)
    with pytest.raises(ValueError, match="pred_embeddings"):
        labeller(image, ["A dog."], _proposals())


def test_records_round_trip_and_proposals_move_to_the_original_size():
    inst = _labeller()(torch.zeros(3, HEIGHT, WIDTH), ["a dog"], _proposals())[0]
    assert PseudoInstance.from_json(inst.to_json()) == inst
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    assert np.array_equal(decode_mask(encode_mask(mask)), mask)
    small = proposals_at_size(_proposals(), HEIGHT // 2, WIDTH // 2)
    assert small.pred_masks.shape == (4, HEIGHT // 2, WIDTH // 2)
    assert small.pred_boxes.tensor[1].tolist() == [8.0, 2.0, 16.0, 14.0]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="not in the pseudo-label vocabulary"):
        PseudoInstanceLabeller(None, CaptionNounMatcher.coco(VOCAB), ["person"], templates=["{}"])
    with pytest.raises(ValueError, match="region embedding"):
        _labeller(region_embedding="box")
    with pytest.raises(ValueError, match="differ in size"):
        _labeller()(torch.zeros(3, 8, 8), ["a dog"], _proposals())
    bad = _proposals()
    bad.pred_masks = bad.pred_masks[:, :4]
    with pytest.raises(ValueError, match="pred_masks"):
        proposals_at_size(bad, HEIGHT, WIDTH)
