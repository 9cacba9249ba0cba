"""XPM's official class embeddings and scoring (MODEL.XPM.CLASS_EMBEDDING "bert") against
hand-written references of the official code: the masked mean of BERT input embeddings over a
padded batch (construct_coco_json.py:206-224), the raw dot product with a zero background
row (roi_box_predictors.py:65-67, st_generalized_rcnn.py:211-215), unnormalised for the
teacher and L2-normalised for the student (st_generalized_rcnn.py:164-177)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import tiny_xpm_cfg, xpm_batch
from ovseg_testing.bert import make_tiny_bert, require_transformers
from ovseg_testing.models import XPM_NAMES

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ovseg.clip import build_clip_teacher
from ovseg.engine.checkpoint import AtomicCheckpointer, load_model_weights
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


def test_loading_bert_leaves_torch_random_numbers_alone(bert, monkeypatch):
    # transformers < 4.36 initialises the layers it then overwrites from the global
    # generator: the model built after the class embeddings would start elsewhere
    from transformers import BertModel

    loader = BertModel.from_pretrained.__func__

    def drawing(cls, *args, **kwargs):
        torch.rand(1000)  # what an old transformers does while loading
        return loader(cls, *args, **kwargs)

    monkeypatch.setattr(BertModel, "from_pretrained", classmethod(drawing))
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    assert BertClassEmbeddings(bert).table.shape[1] == 32
    torch.testing.assert_close(torch.rand(3), want, rtol=0, atol=0)


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


def _eval(model) -> dict:
    model.eval().roi_heads.score_thresh = 0.0  # untrained: keep every detection
    with torch.no_grad():
        (out,) = model([{"image": xpm_batch(1)[0]["image"], "vocabulary": list(XPM_NAMES)}])
    return out


def _tower_state(cfg) -> dict:
    """A CLIP tower's weights as a checkpoint saved with one holds them (``teacher.model.*``)."""
    return {"teacher.model." + k: v for k, v in build_clip_teacher(cfg).model.state_dict().items()}


@pytest.mark.parametrize("arch", ["XPMTeacher", "XPMStudent"])
def test_bert_classes_build_no_clip_evaluate_save_and_load(tmp_path, bert, arch, caplog):
    """Nothing of a BERT-class model reads CLIP, so none is built (nor its random-weights
    warning); it evaluates, its checkpoint loads, and so does one saved with a CLIP tower."""
    from ovseg.pseudo import find_teacher

    cfg = tiny_xpm_cfg(
        tmp_path, arch, "MODEL.XPM.CLASS_EMBEDDING", "bert", "MODEL.XPM.BERT_NAME", bert
    )
    with caplog.at_level(logging.WARNING):
        model = build_model(cfg)
    assert not [m for m in model.modules() if type(m).__module__.startswith("open_clip")]
    assert model.teacher is None and find_teacher(model) is None and model.classifier is None
    assert "no knowledge to distil" not in caplog.text
    out = _eval(model)
    assert out["sem_seg"].shape == (3, 64, 64) and len(out["instances"]) > 0
    AtomicCheckpointer(model, str(tmp_path / "run")).save("model_final")
    torch.manual_seed(1)  # another initialisation, replaced by the checkpoint's
    again = build_model(cfg)
    load_model_weights(again, str(tmp_path / "run" / "model_final.pth"))
    torch.testing.assert_close(_eval(again)["sem_seg"], out["sem_seg"], rtol=0, atol=0)
    # a checkpoint of a build that had the tower: its CLIP keys are not this model's
    with caplog.at_level(logging.WARNING):
        tower = _tower_state(cfg)
    assert "no knowledge to distil" in caplog.text  # the warning is seen when it is logged
    torch.save({"model": {**model.state_dict(), **tower}}, tmp_path / "tower.pth")
    assert not again.load_state_dict({**model.state_dict(), **tower}).unexpected_keys
    load_model_weights(again, str(tmp_path / "tower.pth"))


def test_bert_student_starts_from_a_teacher_checkpoint_saved_with_a_clip_tower(tmp_path, bert):
    opts = ["MODEL.XPM.CLASS_EMBEDDING", "bert", "MODEL.XPM.BERT_NAME", bert]
    cfg = tiny_xpm_cfg(tmp_path, "XPMTeacher", *opts)
    teacher = build_model(cfg)
    path = tmp_path / "teacher.pth"
    torch.save({"model": {**teacher.state_dict(), **_tower_state(cfg)}}, path)
    student = build_model(
        tiny_xpm_cfg(tmp_path, "XPMStudent", *opts, "MODEL.XPM.TEACHER_WEIGHTS", str(path))
    )
    assert student.teacher is None
    torch.testing.assert_close(student.roi_heads.state_dict()["res5.0.conv1.weight"],
                               teacher.roi_heads.state_dict()["res5.0.conv1.weight"])  # fmt: skip


def test_clip_classes_still_need_the_clip_teacher(tmp_path):
    parts = build_model(tiny_xpm_cfg(tmp_path, "XPMTeacher"))
    kwargs = {k: getattr(parts, k) for k in ("backbone", "proposal_generator", "roi_heads")}
    with pytest.raises(ValueError, match="CLIP classes needs the CLIP teacher"):
        type(parts)(
            teacher=None, templates=["{}"], pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, **kwargs
        )


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
