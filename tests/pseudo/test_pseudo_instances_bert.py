"""XPM's own pseudo-label matching in the teacher's BERT space (MODEL.XPM.CLASS_EMBEDDING
"bert" with REGION_EMBEDDING "teacher"), against the official formula written out
(st_generalized_rcnn.py:202-209 ``extract_emb``, :226-255 ``generate_pseudo_label``): nouns
as L2-normalised masked means of BERT's input word-piece embeddings, regions as the raw
projected RoI features, their raw dot product, per noun the best proposal, sigmoid scores;
the same labels when only the winners' masks are computed. Then the generation tool on a
tiny BERT teacher and the captioned COCO fixture."""

import json

import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import tiny_xpm_cfg, xpm_batch
from ovseg_testing.bert import make_tiny_bert, require_transformers
from ovseg_testing.configs import SMALL_OPTS
from ovseg_testing.paths import CONFIGS
from ovseg_testing.xpm import captioned_labelling_opts, registered_captioned_coco

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from ovseg.data import build_dataset_mapper
from ovseg.data.captions import CaptionNounMatcher
from ovseg.engine.defaults import load_config
from ovseg.engine.pseudo_instances import build_instance_labeller
from ovseg.engine.pseudo_labelling import main, parse_args
from ovseg.modeling.xpm.bert import BertClassEmbeddings
from ovseg.pseudo import InstancePseudoLabelStore, PseudoInstanceLabeller

pytestmark = pytest.mark.usefixtures("one_torch_thread")
require_transformers()

VOCAB = ["cat", "dog", "traffic light"]
# the captioned COCO fixture's caption words, so its nouns get their own word pieces
WORDS = ["man", "woman", "people", "person", "someone", "puppy", "tv", "television", "set"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert"), words=WORDS)


def official_extract_emb(folder, words):
    """``extract_emb``: a padded batch with special tokens, their mask zeroing [CLS], [SEP]
    and padding, the masked mean of the input embeddings, L2-normalised."""
    from transformers import BertModel, BertTokenizer

    tok = BertTokenizer.from_pretrained(folder)
    table = BertModel.from_pretrained(folder).get_input_embeddings().weight.detach()
    batch = tok(words, add_special_tokens=True, padding=True, return_special_tokens_mask=True)
    mask = 1 - torch.tensor(batch["special_tokens_mask"]).float()
    emb = (table[torch.tensor(batch["input_ids"])] * mask[:, :, None]).sum(1) / mask.sum(1)[:, None]
    return F.normalize(emb, dim=-1)


def _proposals(embeddings):
    proposals = Instances((8, 8))
    proposals.pred_boxes = Boxes(torch.tensor([[0.0, 0, 4, 4], [4, 0, 8, 4], [0, 4, 8, 8]]))
    masks = torch.zeros(3, 8, 8)
    masks[0, :4, :4], masks[1, :4, 4:], masks[2, 4:] = 0.9, 0.8, 0.7
    proposals.pred_masks = masks
    proposals.pred_embeddings = embeddings
    return proposals


def test_bert_nouns_pick_proposals_by_the_raw_dot_product(bert):
    labeller = PseudoInstanceLabeller(
        None, CaptionNounMatcher(VOCAB), VOCAB, templates=["a {}"],
        region_embedding="teacher", bert=BertClassEmbeddings(bert),
    )  # fmt: skip
    captions = ["A cat under a traffic light."]
    assert [n for n, _ in labeller.nouns(captions)] == ["cat", "traffic light"]
    words = official_extract_emb(bert, ["cat", "traffic light"])  # (2, D), unit rows
    cat, light = words
    assert abs(float(cat @ light)) < 0.9, "the tiny BERT's two nouns are distinct"
    # orthonormal helpers: q in the plane of the two nouns, o off both
    q = F.normalize(light - (light @ cat) * cat, dim=0)
    o = torch.randn(words.shape[1], generator=torch.Generator().manual_seed(0))
    o = F.normalize(o - (o @ cat) * cat - (o @ q) * q, dim=0)
    # by hand: proposal 0 is the cat's exactly but short (cosine 1, dot 0.5), proposal 1 long
    # and off (cosine 0.83, dot 3): the raw dot picks 1 where a cosine would pick 0;
    # proposal 2 (10 q) is the traffic light's (dot 10 sqrt(1 - c^2) > 3 c)
    regions = torch.stack([0.5 * cat, 3 * cat + 2 * o, 10 * q])
    scores = torch.einsum("pd,wd->pw", regions, words)  # official :245
    best_scores, best = scores.max(dim=0)  # per word the best region (:247)
    assert best.tolist() == [1, 2]
    assert F.cosine_similarity(regions[0], cat, dim=0) > F.cosine_similarity(regions[1], cat, 0)
    out = labeller(torch.zeros(3, 8, 8), captions, _proposals(regions))
    assert [(p.noun, p.category_id, p.proposal) for p in out] == [
        ("cat", 0, 1),
        ("traffic light", 2, 2),
    ]
    assert out[0].box == (4.0, 0.0, 8.0, 4.0) and out[1].box == (0.0, 4.0, 8.0, 8.0)
    got = torch.tensor([[p.cosine, p.score] for p in out])
    want = torch.stack([best_scores, torch.sigmoid(best_scores)], dim=1)  # :255
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    settings = labeller.settings()
    assert settings["text_space"] == {
        "bert": BertClassEmbeddings(bert).fingerprint(),
        "product": "dot",
    }
    # the BERT space needs the teacher's own regions; the CLIP space a CLIP
    for mode in ("crop", "pool"):
        with pytest.raises(ValueError, match=f"region embedding '{mode}' is CLIP's image side"):
            PseudoInstanceLabeller(
                None, CaptionNounMatcher(VOCAB), VOCAB, templates=["{}"],
                region_embedding=mode, bert=BertClassEmbeddings(bert),
            )  # fmt: skip
    with pytest.raises(ValueError, match="needs a CLIP teacher"):
        PseudoInstanceLabeller(None, CaptionNounMatcher(VOCAB), VOCAB, templates=["{}"])


def test_the_bert_fingerprint_follows_the_weights_not_the_folder(bert, tmp_path):
    again = make_tiny_bert(tmp_path / "same", words=WORDS)
    other = make_tiny_bert(tmp_path / "other", words=WORDS, seed=1)
    fingerprint = BertClassEmbeddings(bert).fingerprint()
    assert BertClassEmbeddings(again).fingerprint() == fingerprint
    assert BertClassEmbeddings(other).fingerprint() != fingerprint


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    with registered_captioned_coco(tmp_path_factory.mktemp("datasets")) as coco:
        yield coco


def _opts(tmp_path, bert, region="teacher"):
    return captioned_labelling_opts(
        tmp_path,
        *SMALL_OPTS["XPMTeacher"],
        "MODEL.META_ARCHITECTURE", "XPMTeacher",
        "MODEL.XPM.CLASS_EMBEDDING", "bert",
        "MODEL.XPM.BERT_NAME", bert,
        "MODEL.XPM.REGION_EMBEDDING", region,
        "MODEL.XPM.PROPOSE_TOPK", "20",
    )  # fmt: skip


def test_the_tool_labels_in_the_bert_space_of_a_bert_teacher(captioned, bert, tmp_path):
    out, opts = tmp_path / "store", _opts(tmp_path, bert)
    argv = ["--config-file", str(CONFIGS / "Base-ovseg.yaml"), "--output", str(out)]
    assert main(parse_args([*argv, "--no-progress", *opts]))["written"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    xpm = manifest["teacher"]["settings"]["xpm"]
    want = {"bert": BertClassEmbeddings(bert).fingerprint(), "product": "dot"}
    assert xpm["region_embedding"] == "teacher" and xpm["text_space"] == want
    assert manifest["teacher"]["clip"] is None  # no CLIP is built, none enters the fingerprint

    # each record is the official formula on the teacher's proposals (same seed, same teacher)
    cfg = load_config(str(CONFIGS / "Base-ovseg.yaml"), opts)
    job = build_instance_labeller(cfg)
    assert job.labeller.clip is None and job.labeller.bert is job.proposer.bert
    assert not [m for m in job.proposer.modules() if type(m).__module__.startswith("open_clip")]
    records = InstancePseudoLabelStore.open(str(out))
    for d in job.dataset_dicts:
        record = records.read(str(d["image_id"]))
        nouns = [n for n, _ in record["nouns"]]
        assert len(nouns) >= 2 and [i.noun for i in record["instances"]] == nouns
        (proposals,) = job.proposer.propose([job.mapper(d)])
        scores = torch.einsum(
            "pd,wd->pw", proposals.pred_embeddings, official_extract_emb(bert, nouns)
        )
        best_scores, best = scores.max(dim=0)
        assert [i.proposal for i in record["instances"]] == best.tolist()
        got = torch.tensor([i.score for i in record["instances"]])
        torch.testing.assert_close(got, torch.sigmoid(best_scores), rtol=0, atol=1e-5)
    # a store made in CLIP's space is another labeller's: resuming into it is refused, and
    # training reads a store only with the space it was made in
    pool = _opts(tmp_path, bert, "pool")
    with pytest.raises(ValueError, match="made differently"):
        main(parse_args([*argv, "--no-progress", *pool]))
    clip_store = tmp_path / "clip_store"
    main(parse_args([*argv[:-1], str(clip_store), "--no-progress", *pool]))
    # CLIP's space with BERT classes: the labeller builds the CLIP the teacher does not have
    assert json.loads((clip_store / "manifest.json").read_text())["teacher"]["clip"]

    def mapper(root, opts):
        cfg = load_config(argv[1], [*opts, "DATASETS.PSEUDO_LABELS", str(root)])
        return build_dataset_mapper(cfg, True)

    assert mapper(out, opts) is not None
    with pytest.raises(ValueError, match="in BERT's space but this config .* in CLIP's"):
        mapper(out, pool)
    with pytest.raises(ValueError, match="in CLIP's space but this config .* in BERT's"):
        mapper(clip_store, opts)


@pytest.mark.parametrize("topk", [20, 0])
def test_bert_labels_with_lazy_masks_equal_the_full_path(bert, tmp_path, topk):
    # XPM's mask pass (st_generalized_rcnn.py:264-272): the mask head at the winners only
    torch.manual_seed(0)
    opts = ["MODEL.XPM.CLASS_EMBEDDING", "bert", "MODEL.XPM.BERT_NAME", bert]
    model = build_model(tiny_xpm_cfg(tmp_path, "XPMTeacher", *opts)).eval()
    labeller = PseudoInstanceLabeller(
        None, CaptionNounMatcher(VOCAB), VOCAB, templates=["{}"], region_embedding="teacher",
        bert=model.bert,
    )  # fmt: skip
    image = xpm_batch(1)[0]["image"]
    inputs, captions = [{"image": image}], ["A cat under a traffic light.", "A dog."]
    (full,) = model.propose(inputs, topk=topk)
    rows = []
    hook = model.roi_heads.mask_head.register_forward_hook(
        lambda m, args, out: rows.append(len(args[0]))
    )
    try:
        (lazy,) = model.propose(inputs, topk=topk, masks=False)
        got = labeller(image, captions, lazy)
    finally:
        hook.remove()
    assert torch.equal(lazy.pred_embeddings, full.pred_embeddings)  # raw, BERT's space
    want = labeller(image, captions, full)
    assert len(want) == 3 and got == want
    assert rows == [len({p.proposal for p in got})] and rows[0] < len(full)
