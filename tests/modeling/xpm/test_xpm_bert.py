"""XPM's official class embeddings and scoring (MODEL.XPM.CLASS_EMBEDDING "bert") against
hand-written references of the official code: the masked mean of BERT input embeddings over a
padded batch (construct_coco_json.py:206-224), the raw dot product with a zero background
row (roi_box_predictors.py:65-67, st_generalized_rcnn.py:211-215), unnormalised for the
teacher and L2-normalised for the student (st_generalized_rcnn.py:164-177)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import tiny_xpm_cfg, xpm_batch
from ovseg_testing.bert import make_tiny_bert, require_transformers

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ovseg.modeling.xpm.bert import BertClassEmbeddings
from ovseg.modeling.xpm.heads import embedding_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")
require_transformers()

NAMES = ["cat", "traffic light", "hair drier"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


def test_class_embeddings_are_the_official_masked_mean(bert):
    from transformers import BertModel, BertTokenizer

    tok = BertTokenizer.from_pretrained(bert)
    table = BertModel.from_pretrained(bert).get_input_embeddings().weight.detach()
    batch = tok(NAMES, add_special_tokens=True, padding=True, return_special_tokens_mask=True)
    ids = torch.tensor(batch["input_ids"])
    mask = 1 - torch.tensor(batch["special_tokens_mask"]).float()
    assert mask.sum(1).tolist() == [1, 2, 3]  # "hair drier": hair, dr, ##ier
    official = (table[ids] * mask[:, :, None]).sum(1) / mask.sum(1)[:, None]
    mine = BertClassEmbeddings(bert)(NAMES)
    torch.testing.assert_close(mine, official, rtol=0, atol=1e-6)
    assert BertClassEmbeddings(bert)(["Cat"]).allclose(mine[:1])  # uncased


def test_dot_scoring_is_the_official_einsum_with_a_zero_background():
    gen = torch.Generator().manual_seed(0)
    emb, text = torch.randn(5, 8, generator=gen), torch.randn(3, 8, generator=gen)
    official = torch.einsum("pe,ce->pc", emb, torch.cat([torch.zeros(1, 8), text]))
    mine = embedding_logits(emb, text, 100.0, dot=True)  # tau plays no part
    torch.testing.assert_close(mine[:, :3], official[:, 1:])
    assert torch.equal(mine[:, 3], official[:, 0])
    cos = embedding_logits(emb, text, 100.0)  # the default: tau * cos
    torch.testing.assert_close(
        cos[:, :3], 100 * F.normalize(emb, dim=-1) @ F.normalize(text, dim=-1).t()
    )


@pytest.mark.parametrize("arch,normalized", [("XPMTeacher", False), ("XPMStudent", True)])
def test_teacher_scores_raw_and_student_normalised_embeddings(tmp_path, bert, arch, normalized):
    cfg = tiny_xpm_cfg(
        tmp_path, arch, "MODEL.XPM.CLASS_EMBEDDING", "bert", "MODEL.XPM.BERT_NAME", bert
    )
    model = build_model(cfg).eval()
    raw = BertClassEmbeddings(bert)(NAMES)
    want = F.normalize(raw, dim=-1) if normalized else raw
    torch.testing.assert_close(model.text(NAMES), want)
    assert model.roi_heads.dot_product
    assert model.roi_heads.box_predictor.projection.out_features == raw.shape[1]
    assert not any("bert" in k or "word" in k for k in model.state_dict())  # not saved
    # proposals with the raw BERT-space region embeddings XPM matches caption nouns to
    # (st_generalized_rcnn.py:226-229: emb_pred of the pooled RoI feature, not normalised)
    model.propose_topk = 3
    image = torch.zeros(3, 32, 32)
    image[:, 8:24, 8:24] = 200
    (proposals,) = model.propose([{"image": image}])
    assert proposals.has("pred_masks") and len(proposals) == 3
    features = model.backbone(model.images([{"image": image}]).tensor)
    rpn, _ = model.proposal_generator(model.images([{"image": image}]), features, None)
    top = rpn[0][rpn[0].objectness_logits.argsort(descending=True)[:3]]
    _, (want,) = model.roi_heads.refine(features, [top])
    torch.testing.assert_close(proposals.pred_embeddings, want)
    assert not torch.allclose(want.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("arch", ["XPMTeacher", "XPMStudent"])
def test_bert_classes_train_teacher_and_student(tmp_path, bert, arch):
    """The paper's run trains with the BERT classes: a few SGD steps on tiny batches (the
    student's with pseudo instances), every loss finite and the total going down."""
    torch.manual_seed(0)
    opts = ["MODEL.XPM.CLASS_EMBEDDING", "bert", "MODEL.XPM.BERT_NAME", bert]
    model = build_model(tiny_xpm_cfg(tmp_path, arch, *opts)).train()
    student = arch == "XPMStudent"
    if student:
        model.seen_names = ("cat", "bird")  # "dog" is unseen: only pseudo-labels name it
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    batch = xpm_batch(pseudo=student)
    totals = []
    for step in range(10):
        torch.manual_seed(step)
        with EventStorage(step):
            losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        assert ("loss_cls_pseudo" in losses) == student
        total = sum(losses.values())
        totals.append(float(total.detach()))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert min(totals[-3:]) < 0.7 * totals[0], totals


def test_unknown_class_embedding_is_refused(tmp_path):
    cfg = tiny_xpm_cfg(tmp_path, "XPMTeacher", "MODEL.XPM.CLASS_EMBEDDING", "glove")
    with pytest.raises(ValueError, match="CLASS_EMBEDDING='glove'"):
        build_model(cfg)


def test_a_folder_that_is_no_saved_bert_is_refused_by_name(tmp_path, bert):
    # transformers reads a folder without config.json as the default BERT (768 wide)
    from ovseg.modeling.xpm.bert import bert_width

    with pytest.raises(OSError, match="folder without config.json, vocab.txt"):
        bert_width(str(tmp_path))
    with pytest.raises(OSError, match="folder without config.json"):
        BertClassEmbeddings(str(tmp_path))(["cat"])
    with pytest.raises(OSError, match="does not exist"):
        bert_width(str(tmp_path / "nothing"))
    assert bert_width(bert) == 32


def test_bert_classes_label_with_the_teachers_bert_or_refuse_a_teacher_without_one(tmp_path, bert):
    from ovseg.engine.pseudo_instances import bert_text_space

    opts = ["MODEL.XPM.CLASS_EMBEDDING", "bert", "MODEL.XPM.BERT_NAME", bert]
    cfg = tiny_xpm_cfg(tmp_path, "XPMStudent", *opts, "MODEL.XPM.REGION_EMBEDDING", "teacher")
    teacher = build_model(tiny_xpm_cfg(tmp_path, "XPMTeacher", *opts))
    assert bert_text_space(cfg, teacher) is teacher.bert
    for region in ("crop", "pool"):  # CLIP text with CLIP regions, as with CLIP classes
        cfg_clip = tiny_xpm_cfg(tmp_path, "XPMStudent", *opts, "MODEL.XPM.REGION_EMBEDDING", region)
        assert bert_text_space(cfg_clip, teacher) is None
    with pytest.raises(ValueError, match="teacher's BERT, which Module .*does not have"):
        bert_text_space(cfg, torch.nn.Module())
