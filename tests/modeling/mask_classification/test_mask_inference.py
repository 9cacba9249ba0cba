"""Semantic, panoptic and instance inference on hand-built queries."""

import math

import pytest
import torch

from ovseg.modeling.mask_classification import (
    freeseg_instance_inference,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)

BIG = 10.0


def _masks(*pixel_sets, width=6):
    """(Q, 1, width) logits: +BIG on the listed pixels, -BIG elsewhere."""
    out = torch.full((len(pixel_sets), 1, width), -BIG)
    for q, pixels in enumerate(pixel_sets):
        out[q, 0, list(pixels)] = BIG
    return out


def test_semantic_is_the_probability_weighted_sum_of_masks():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    logits = torch.tensor([[[0.0]], [[math.log(3.0)]]])  # sigmoid 0.5 and 0.75
    sem = semantic_inference(probs, logits)
    assert sem.shape == (2, 1, 1)
    assert sem[0, 0, 0].item() == pytest.approx(0.6 * 0.5 + 0.2 * 0.75)
    assert sem[1, 0, 0].item() == pytest.approx(0.3 * 0.5 + 0.7 * 0.75)
    torch.testing.assert_close(semantic_inference(probs[:, :2], logits, has_no_object=False), sem)


# class 0 is stuff, class 1 a thing; q3 overlaps badly, q4 is no-object
PAN_PROBS = torch.tensor(
    [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.05, 0.9, 0.05], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]]
)
PAN_MASKS = _masks((0, 1), (2, 3), (4, 5), (0, 1, 2, 3, 4), (5,))


@pytest.mark.parametrize("assignment", ["class", "query"])
def test_panoptic_merges_stuff_and_drops_a_low_overlap_segment(assignment):
    seg, info = panoptic_inference(
        PAN_PROBS, PAN_MASKS, thing_ids={1}, overlap_threshold=0.5, pixel_assignment=assignment
    )
    assert seg.dtype == torch.int32
    assert seg[0].tolist() == [1, 1, 1, 1, 2, 2]  # q0 and q1 merged; q3 (1/5 kept) dropped
    assert info == [
        {"id": 1, "isthing": False, "category_id": 0},
        {"id": 2, "isthing": True, "category_id": 1},
    ]


def test_panoptic_thresholds_and_freeseg_temperature():
    seg, info = panoptic_inference(PAN_PROBS, PAN_MASKS, thing_ids={1}, thing_score_threshold=0.95)
    assert seg[0].tolist() == [1, 1, 1, 1, 0, 0] and len(info) == 1  # the thing scores 0.9
    seg, _ = panoptic_inference(PAN_PROBS, PAN_MASKS, thing_ids={1}, object_mask_threshold=0.85)
    assert seg[0].tolist() == [1, 1, 0, 0, 2, 2]  # q1 (0.8) is dropped before assignment
    # FreeSeg: probabilities without no-object, sharpened by softmax(p / 0.01)
    seg, info = panoptic_inference(
        PAN_PROBS[:, :2],
        PAN_MASKS,
        thing_ids={1},
        has_no_object=False,
        temperature=0.01,
        thing_score_threshold=0.5,
        overlap_threshold=0.5,
        pixel_assignment="class",
    )
    assert seg[0].tolist() == [1, 1, 1, 1, 2, 2] and len(info) == 2
    empty, none = panoptic_inference(PAN_PROBS[4:], PAN_MASKS[4:], thing_ids={1})
    assert not empty.any() and none == []
    with pytest.raises(ValueError, match="pixel_assignment"):
        panoptic_inference(PAN_PROBS, PAN_MASKS, thing_ids={1}, pixel_assignment="pixel")


def test_panoptic_official_drop_of_one_class():
    # the FreeSeg release's keep = labels.ne(num_classes): the thing class 1 never a segment
    kwargs = {"thing_ids": {1}, "has_no_object": False, "overlap_threshold": 0.5}
    seg, info = panoptic_inference(PAN_PROBS[:, :2], PAN_MASKS, drop_label=1, **kwargs)
    assert seg[0].tolist() == [1, 1, 1, 1, 0, 1]  # q2, q3 dropped; q4 (a tie: class 0) stuff
    assert [s["category_id"] for s in info] == [0]
    seg, info = panoptic_inference(PAN_PROBS[:, :2], PAN_MASKS, drop_label=2, **kwargs)
    assert [s["category_id"] for s in info] == [0, 1]  # past the last class: no-op (COCO)


def test_panoptic_never_lists_a_segment_left_without_pixels():
    # FreeSeg's class assignment lets two queries of one thing class claim the same pixels:
    # the later one takes them (open_vocabulary_model.py:521-545), and a segment it covers
    # wholly must leave the list, or the panoptic evaluator refuses the prediction
    probs = torch.tensor([[0.05, 0.95], [0.05, 0.95], [0.9, 0.1]])
    masks = _masks((2, 3), (1, 2, 3, 4), (0, 5))
    seg, info = panoptic_inference(
        probs, masks, thing_ids={1}, has_no_object=False, temperature=0.01,
        thing_score_threshold=0.5, overlap_threshold=0.5, pixel_assignment="class",
    )  # fmt: skip
    assert seg[0].tolist() == [3, 2, 2, 2, 2, 3]
    assert info == [
        {"id": 2, "isthing": True, "category_id": 1},
        {"id": 3, "isthing": False, "category_id": 0},
    ]
    assert {s["id"] for s in info} == set(seg.unique().tolist()) - {0}


def test_topk_instances_scores_masks_and_boxes():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    logits = torch.tensor([[[2.0, 2.0, -2.0, -2.0]], [[0.0, -1.0, 3.0, 3.0]]])
    inst = instance_inference(probs, logits, topk=2)
    order = inst.scores.argsort(descending=True)
    assert inst.pred_classes[order].tolist() == [1, 0]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert inst.scores[order].tolist() == pytest.approx([0.7 * sig(3.0), 0.6 * sig(2.0)], rel=1e-5)
    assert inst.pred_masks[order[1]].tolist() == [[1.0, 1.0, 0.0, 0.0]]
    assert inst.pred_boxes.tensor[order].tolist() == [[2.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0]]
    things = instance_inference(probs, logits, topk=4, thing_ids={0})
    assert things.pred_classes.tolist() == [0, 0]


def test_freeseg_instances_suppress_a_mask_covering_others():
    # q0 spans both instances q1 and q2 of class 1; q3 is undecided (score 0.5)
    probs = torch.tensor(
        [[0.05, 0.9, 0.05], [0.05, 0.9, 0.05], [0.05, 0.9, 0.05], [0.45, 0.45, 0.1]]
    )
    masks = _masks(range(6), (0, 1, 2), (3, 4, 5), (0,))
    inst = freeseg_instance_inference(probs, masks, thing_ids={1})
    assert len(inst) == 2 and inst.pred_classes.tolist() == [1, 1]
    assert inst.pred_masks[:, 0].sum(1).tolist() == [3.0, 3.0]
    assert inst.scores.tolist() == pytest.approx([1.0, 1.0], abs=1e-3)
    # the release never predicts the last real class: every score collapses
    assert len(freeseg_instance_inference(probs, masks, official_defects=True)) == 0


def test_freeseg_instances_group_by_class_not_by_a_stale_label():
    # q0 (class 0) is covered by q1 (class 1) over 5/6: different classes, both kept;
    # the release groups both under the last label and drops q0
    probs = torch.tensor([[0.9, 0.02, 0.02, 0.06], [0.02, 0.95, 0.02, 0.01]])
    masks = _masks(range(6), range(5))
    fixed = freeseg_instance_inference(probs, masks, overlap_threshold=0.1)
    assert sorted(fixed.pred_classes.tolist()) == [0, 1]
    official = freeseg_instance_inference(
        probs, masks, overlap_threshold=0.1, official_defects=True
    )
    assert official.pred_classes.tolist() == [1]


def _two_queries():
    """Query 0 (score 0.5) covers 5 pixels; query 1 (score 0.875) only pixel 0, which it
    wins."""
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.125, 0.875, 0.0]])
    logits = torch.full((2, 1, 5), BIG)
    logits[1, 0, 1:] = -BIG
    return probs, logits


def test_panoptic_keeps_a_segment_at_exactly_the_overlap_threshold():
    # query 0 keeps 4 of its 5 pixels: 4/5 is not below 0.8 (Mask2Former
    # maskformer_model.py:301 and FreeSeg :526 drop a segment below it)
    probs, logits = _two_queries()
    _, segments = panoptic_inference(probs, logits, thing_ids={0, 1}, overlap_threshold=0.8)
    assert sorted(s["category_id"] for s in segments) == [0, 1]


def test_panoptic_drops_a_query_scoring_exactly_the_object_threshold():
    # Mask2Former keeps scores > object_mask_threshold
    probs, logits = _two_queries()
    _, segments = panoptic_inference(probs, logits, thing_ids={0, 1}, object_mask_threshold=0.5)
    assert [s["category_id"] for s in segments] == [1]


def test_topk_pairs_decode_their_query_when_queries_and_classes_differ_in_number():
    # Q = 2 queries, C = 3 classes: the best pair is (query 0, class 2), flat index 2; its
    # query is 2 // C = 0 (2 // Q = 1 would take query 1's mask)
    probs = torch.tensor([[0.0, 0.0, 0.9], [0.0, 0.1, 0.0]])
    logits = _masks((0, 1), (4, 5))
    inst = instance_inference(probs, logits, topk=1, has_no_object=False)
    assert inst.pred_classes.tolist() == [2]
    assert inst.pred_masks[0, 0].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    both = instance_inference(probs, logits, topk=2, has_no_object=False)
    by_class = {int(c): m[0].tolist() for c, m in zip(both.pred_classes, both.pred_masks)}
    assert by_class == {2: [1.0, 1.0, 0, 0, 0, 0], 1: [0, 0, 0, 0, 1.0, 1.0]}


# FreeSeg's release thresholds are strict (bytedance/FreeSeg @7707335,
# mask2former/open_vocabulary_model.py:618 score > 0.5, :619 area share > overlap, :636
# union share > 0.8)
def test_freeseg_instance_score_exactly_at_the_threshold_is_dropped():
    # two equal class probabilities: softmax(p / T) is exactly 0.5, not > 0.5
    probs = torch.tensor([[0.4, 0.4]])
    assert len(freeseg_instance_inference(probs, _masks(range(6)), has_no_object=False)) == 0


def test_freeseg_instance_overlap_exactly_at_the_threshold_is_dropped():
    # q0 (class 0) keeps 2 of its 4 pixels (q1, class 1, wins pixels 2 and 3): 2/4 is not
    # > 0.5, so only q1 stays
    probs = torch.tensor([[0.9, 0.1], [0.0, 1.0]])
    inst = freeseg_instance_inference(
        probs, _masks((0, 1, 2, 3), (2, 3)), has_no_object=False, overlap_threshold=0.5
    )
    assert inst.pred_classes.tolist() == [1]


def test_freeseg_group_suppression_needs_more_than_the_ratio():
    # class 1: q0 covers 5 pixels, q1 4 of them; 4/5 = 0.8 is not > 0.8: both kept
    probs = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    inst = freeseg_instance_inference(
        probs, _masks(range(5), range(4)), has_no_object=False, group_threshold=0.8
    )
    assert len(inst) == 2


def test_freeseg_default_mask_test_is_probability_one_half():
    # logit 0.25 (probability 0.56) is inside the mask by default; only the release's
    # defects (official_defects) threshold the logits themselves at 0.5
    probs = torch.tensor([[0.9, 0.1]])
    logits = torch.full((1, 1, 6), 0.25)
    assert len(freeseg_instance_inference(probs, logits, has_no_object=False)) == 1
    official = freeseg_instance_inference(probs, logits, has_no_object=False, official_defects=True)
    assert len(official) == 0
