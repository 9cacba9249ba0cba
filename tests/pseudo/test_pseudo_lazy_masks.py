"""XPM's pseudo-labels with lazy masks (ovseg/pseudo/lazy_masks.py, XPMTeacher.propose
``masks=False``): every proposal is matched, the mask head runs at the winners alone (the
official mask pass, st_generalized_rcnn.py:264-272), and the labels are those of the path
that pastes every proposal's mask; then MODEL.XPM.PROPOSE_TOPK 0 end to end."""

import json

import pytest
import torch
from ovseg_testing import tiny_xpm_cfg, xpm_batch
from ovseg_testing.configs import SMALL_OPTS
from ovseg_testing.models import XPM_NAMES
from ovseg_testing.paths import CONFIGS
from ovseg_testing.xpm import XPM_TRAIN, captioned_labelling_opts, registered_captioned_coco

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances

from ovseg.data.captions import CaptionNounMatcher
from ovseg.engine.defaults import load_config
from ovseg.engine.pseudo_instances import build_instance_labeller, instance_labeller_manifest
from ovseg.pseudo import (
    InstancePseudoLabelStore,
    LazyMasks,
    PseudoInstanceLabeller,
    generate_pseudo_instances,
    open_store,
)
from ovseg.pseudo.instances import proposals_at_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAPTIONS = ["A cat sits next to a dog.", "A bird, a cat and a dog."]


def test_lazy_masks_compute_only_the_rows_asked_for():
    table = torch.rand(6, 4, 5)
    asked = []

    def compute(rows):
        asked.append(rows.tolist())
        return table[rows]

    lazy = LazyMasks(compute, 6, (4, 5))
    picked = lazy[torch.tensor([5, 1, 3])][1:]  # views compose; nothing is computed yet
    assert len(lazy) == 6 and len(picked) == 2 and asked == []
    assert torch.equal(picked.probabilities(), table[[1, 3]]) and asked == [[1, 3]]
    assert torch.equal(lazy[torch.arange(6) % 2 == 0].probabilities(), table[[0, 2, 4]])
    assert lazy[torch.tensor([], dtype=torch.long)].probabilities().shape == (0, 4, 5)
    resized = lazy.resized(8, 10)[torch.tensor([2, 0])].probabilities()
    whole = torch.nn.functional.interpolate(table[None], size=(8, 10), mode="bilinear")[0]
    assert torch.equal(resized, whole[[2, 0]])  # as proposals_at_size resizes a tensor
    with pytest.raises(ValueError, match=r"must return \(rows, H, W\)"):
        LazyMasks(lambda rows: table, 6, (4, 5))[:2].probabilities()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xpm_lazy_cache")


def _rows_through(module):
    """A list that gets the number of rows of every forward of ``module``, and its hook."""
    rows = []
    return rows, module.register_forward_hook(lambda m, args, out: rows.append(len(args[0])))


@pytest.mark.parametrize("legacy", ["False", "True"])
def test_teacher_labels_with_lazy_masks_equal_the_full_path(cache, legacy):
    torch.manual_seed(0)
    model = build_model(tiny_xpm_cfg(cache, "XPMTeacher", "MODEL.XPM.LEGACY_BOXES", legacy))
    model.eval()
    labeller = PseudoInstanceLabeller(
        model.teacher, CaptionNounMatcher(XPM_NAMES), XPM_NAMES, templates=["a photo of a {}."],
        region_embedding="teacher",
    )  # fmt: skip
    assert not labeller.needs_every_mask
    image = xpm_batch(1)[0]["image"]
    inputs = [{"image": image, "height": 96, "width": 80}]
    rows, hook = _rows_through(model.roi_heads.mask_head)
    try:
        (full,) = model.propose(inputs, topk=20)
        assert rows == [len(full)]  # the full path: every proposal's mask
        (lazy,) = model.propose(inputs, topk=20, masks=False)
        assert rows == [len(full)] and isinstance(lazy.pred_masks, LazyMasks)
        for f, la in zip(full.get_fields().values(), lazy.get_fields().values()):
            if not isinstance(la, LazyMasks):  # boxes, scores, embeddings: the same numbers
                assert torch.equal(getattr(f, "tensor", f), getattr(la, "tensor", la))
        # the labels at another size (the masks resized as a tensor's would be)
        image = torch.nn.functional.interpolate(image[None].float(), size=(72, 60))[0]
        want = labeller(image, CAPTIONS, proposals_at_size(full, 72, 60))
        got = labeller(image, CAPTIONS, proposals_at_size(lazy, 72, 60))
    finally:
        hook.remove()
    assert len(want) == 3 and got == want  # boxes, bool masks, scores, cosines, proposals
    winners = {p.proposal for p in got}
    assert rows[1:] == [len(winners)] and len(winners) < len(full)  # one pass, winners only
    # the probabilities agree to rounding: the mask predictor's 1x1 convolution sums in
    # another order when it runs on fewer rows (CPU), which thresholding at 0.5 does not see
    index = torch.tensor(sorted(winners))
    torch.testing.assert_close(
        lazy.pred_masks[index].probabilities(), full.pred_masks[index], rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("legacy", ["False", "True"])
def test_refined_pseudo_masks_come_from_the_box_refined_once_more(cache, legacy):
    """MODEL.XPM.PSEUDO_MASK_REFINE: the official mask pass runs the box head again on the
    pseudo boxes (st_generalized_rcnn.py:266, roi_heads.py:45, :64), so the mask head pools at
    the box refined twice; the mask is pasted at the pseudo box (:269)."""
    torch.manual_seed(0)
    cfg = tiny_xpm_cfg(cache, "XPMTeacher", "MODEL.XPM.LEGACY_BOXES", legacy)
    model = build_model(cfg).eval()
    torch.manual_seed(0)
    opts = ("MODEL.XPM.PSEUDO_MASK_REFINE", "True", "MODEL.XPM.REGION_EMBEDDING", "teacher")
    refined = build_model(
        tiny_xpm_cfg(cache, "XPMTeacher", "MODEL.XPM.LEGACY_BOXES", legacy, *opts)
    ).eval()
    assert refined.pseudo_mask_refine and not model.pseudo_mask_refine
    refined.load_state_dict(model.state_dict())
    inputs = [{"image": xpm_batch(1)[0]["image"], "height": 96, "width": 80}]
    with torch.no_grad():
        (plain,) = model.propose(inputs, topk=20, masks=False)
        (lazy,) = refined.propose(inputs, topk=20, masks=False)
        assert torch.equal(plain.pred_boxes.tensor, lazy.pred_boxes.tensor)
        rows = torch.tensor([3, 0, 4])
        # by hand: the network-size pseudo boxes, refined once more, the mask head there,
        # pasted at the pseudo boxes
        images = model.images(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        kept = proposals[0][proposals[0].objectness_logits.argsort(descending=True)[:20]]
        boxes, _ = model.roi_heads.refine(features, [kept])
        chosen = boxes[0][rows]
        again = Instances(kept.image_size, proposal_boxes=chosen)
        twice, _ = model.roi_heads.refine(features, [again])
        assert not torch.allclose(twice[0].tensor, chosen.tensor)
        probs = model.roi_heads.mask_probabilities(features, twice)[0]
        det = Instances(kept.image_size, pred_boxes=chosen)
        want = model.paste(det, probs, 96, 80)[1]
        torch.testing.assert_close(lazy.pred_masks[rows].probabilities(), want, rtol=0, atol=1e-6)
        # the mask head saw other RoIs than without the key (the pasted masks may still
        # agree: the legacy paste thresholds them)
        at_pseudo = model.roi_heads.mask_probabilities(features, [chosen])[0]
        assert not torch.allclose(probs, at_pseudo, atol=1e-4)


def test_refined_pseudo_masks_need_the_teachers_region_embedding(cache):
    cfg = tiny_xpm_cfg(cache, "XPMTeacher", "MODEL.XPM.PSEUDO_MASK_REFINE", "True",
                       "MODEL.XPM.REGION_EMBEDDING", "crop")  # fmt: skip
    with pytest.raises(ValueError, match="PSEUDO_MASK_REFINE.*REGION_EMBEDDING 'teacher'"):
        build_model(cfg)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    with registered_captioned_coco(tmp_path_factory.mktemp("datasets")) as coco:
        yield coco


def _opts(tmp_path, topk):
    return captioned_labelling_opts(
        tmp_path,
        *SMALL_OPTS["XPMTeacher"],
        "MODEL.META_ARCHITECTURE", "XPMTeacher",
        "MODEL.XPM.REGION_EMBEDDING", "teacher",
        "MODEL.XPM.PROPOSE_TOPK", str(topk),
    )  # fmt: skip


class EveryMask:
    """The XPM teacher as proposers were before lazy masks: every mask pasted."""

    def __init__(self, teacher):
        self.teacher = teacher

    def propose(self, batched_inputs, masks=True):
        return self.teacher.propose(batched_inputs)


def _records(store):
    return {i: store.read(i) for i in store.image_ids()}


def test_every_proposal_is_matched_end_to_end_and_fingerprinted(captioned, tmp_path):
    cfg = load_config(str(CONFIGS / "Base-ovseg.yaml"), _opts(tmp_path, 0))
    job = build_instance_labeller(cfg)
    (proposals,) = job.proposer.propose([job.mapper(job.dataset_dicts[0])], masks=False)
    assert len(proposals) > 20  # every RPN proposal (POST_NMS_TOPK_TEST 32), not a top k
    manifest = instance_labeller_manifest(cfg, job)
    assert manifest["teacher"]["settings"]["xpm"]["propose_topk"] == 0
    lazy = open_store(str(tmp_path / "lazy"), manifest, InstancePseudoLabelStore)
    full = open_store(str(tmp_path / "full"), manifest, InstancePseudoLabelStore)
    dicts = DatasetCatalog.get(XPM_TRAIN)
    for proposer, store in ((job.proposer, lazy), (EveryMask(job.proposer), full)):
        stats = generate_pseudo_instances(
            proposer, job.labeller, dicts, job.mapper, store, progress=False
        )
        assert stats["written"] == len(dicts) == 2
    records = _records(lazy)
    assert records == _records(full)
    assert sum(len(r["instances"]) for r in records.values()) >= 4
    # the default top 100 keeps the fingerprint it had; a store of another count is refused
    cfg100 = load_config(str(CONFIGS / "Base-ovseg.yaml"), _opts(tmp_path, 100))
    manifest100 = instance_labeller_manifest(cfg100, job)
    assert "propose_topk" not in manifest100["teacher"]["settings"]["xpm"]
    assert manifest100["fingerprint"] != manifest["fingerprint"]
    with pytest.raises(ValueError, match="made differently"):
        open_store(str(tmp_path / "lazy"), manifest100, InstancePseudoLabelStore)
    assert (
        json.loads((tmp_path / "lazy" / "manifest.json").read_text())["fingerprint"]
        == (manifest["fingerprint"])
    )


def test_what_decides_the_proposals_enters_the_fingerprint_unless_as_stores_were_made(
    tmp_path,
):
    from ovseg.engine.pseudo_instances import proposal_settings

    base = load_config(str(CONFIGS / "Base-xpm.yaml"), [])
    assert proposal_settings(base) == {}  # as every store made before was: their fingerprint
    cfg = load_config(
        str(CONFIGS / "Base-xpm.yaml"),
        ["MODEL.XPM.LEGACY_BOXES", "True", "MODEL.RPN.POST_NMS_TOPK_TEST", "300",
         "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", "(10.0, 10.0, 5.0, 1.0)"],
    )  # fmt: skip
    assert proposal_settings(cfg) == {
        "legacy_boxes": True,
        "rpn_post_nms_topk_test": 300,
        "box_reg_weights": [10.0, 10.0, 5.0, 1.0],
    }
