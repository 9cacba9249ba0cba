"""ovseg.convert for XPM: state dicts in the official teacher's and student's layouts (listed
from the official modules at tiny widths, random values) convert into XPMTeacher and
XPMStudent with the official BERT class embeddings and load strictly, every tensor accounted
for and in its place (RPN outputs with their anchors, the stem read in RGB, the foreground
rows of the class-agnostic predictors); unknown, refused and mismatching inputs fail by name."""

from __future__ import annotations

import pytest
import torch
from official_xpm import official_opts, official_xpm_state
from ovseg_testing import ROOT, cpu_opts, tiny_clip_opts, tiny_xpm_cfg
from ovseg_testing import official_boxes as ref
from ovseg_testing.bert import make_tiny_bert, require_transformers

from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes

from ovseg.convert import ConversionError, convert_checkpoint
from ovseg.convert.command import main
from ovseg.convert.xpm import anchor_order, official_cell_anchors
from ovseg.engine import AtomicCheckpointer
from ovseg.engine.defaults import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
require_transformers()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


def _built(tmp, arch: str, bert: str, *opts: str):
    cfg = tiny_xpm_cfg(tmp, arch, *official_opts(bert), *opts)
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, bert):
    return _built(tmp_path_factory.mktemp("clip"), "XPMTeacher", bert)


@pytest.fixture(scope="module")
def student(tmp_path_factory, bert):
    return _built(tmp_path_factory.mktemp("clip"), "XPMStudent", bert)


def test_teacher_converts_and_loads_strictly(teacher):
    cfg, model = teacher
    official = official_xpm_state(cfg)
    out, report = convert_checkpoint("xpm", official, cfg, model=model)
    assert set(report.used) | set(report.dropped) == set(official)
    model.load_state_dict(out, strict=True)
    state = model.state_dict()
    pairs = {
        "backbone.body.stem.bn1.running_var": "backbone.stem.conv1.norm.running_var",
        "backbone.body.layer1.0.downsample.0.weight": "backbone.res2.0.shortcut.weight",
        "backbone.body.layer3.5.bn2.bias": "backbone.res4.5.conv2.norm.bias",
        "roi_heads.box.feature_extractor.head.layer4.2.conv3.weight": (
            "roi_heads.res5.2.conv3.weight"
        ),
        "roi_heads.box.predictor.emb_pred.weight": "roi_heads.box_predictor.projection.weight",
        "roi_heads.mask.predictor.conv5_mask.weight": "roi_heads.mask_head.deconv.weight",
        "rpn.head.conv.weight": "proposal_generator.rpn_head.conv.weight",
    }
    for old, new in pairs.items():
        assert report.used[old] == new
        assert torch.equal(state[new], official[old]), new
    # RGB in, the official BGR filter; foreground rows of the 2-class agnostic predictors
    assert torch.equal(state["backbone.stem.conv1.weight"],
                       official["backbone.body.stem.conv1.weight"][:, [2, 1, 0]])  # fmt: skip
    p = "roi_heads.box.predictor.bbox_pred."
    assert torch.equal(
        state["roi_heads.box_predictor.bbox_pred.weight"], official[p + "weight"][4:]
    )
    p = "roi_heads.mask.predictor.mask_fcn_logits."
    assert torch.equal(state["roi_heads.mask_head.predictor.bias"], official[p + "bias"][1:])
    assert (
        "SHARE_BOX" in report.dropped["roi_heads.mask.feature_extractor.head.layer4.0.conv1.weight"]
    )
    # the release's settings but its box conventions
    assert len(report.notes) == 1 and "set MODEL.XPM.LEGACY_BOXES True" in report.notes[0]


def test_rpn_outputs_follow_their_anchors(teacher):
    """Each detectron2 anchor's objectness and deltas are those the official RPN gives the
    anchor of the same shape (official: aspect ratios outermost)."""
    cfg, model = teacher
    official = official_xpm_state(cfg, seed=1)
    out, _ = convert_checkpoint("xpm", official, cfg, model=model)
    theirs = official["rpn.anchor_generator.cell_anchors.0"]
    order, n_ratios, n_sizes = anchor_order(theirs)
    assert (n_ratios, n_sizes) == (3, 3) and sorted(order) == list(range(9))
    (mine,) = list(model.proposal_generator.anchor_generator.cell_anchors)
    head = "proposal_generator.rpn_head."
    for i, j in enumerate(order):
        w, h = mine[i, 2] - mine[i, 0], mine[i, 3] - mine[i, 1]
        tw, th = theirs[j, 2] - theirs[j, 0] + 1, theirs[j, 3] - theirs[j, 1] + 1
        assert abs(float(h / w) - float(th / tw)) < 0.1 and abs(float(w * h / (tw * th)) - 1) < 0.1
        assert torch.equal(
            out[head + "objectness_logits.weight"][i], official["rpn.head.cls_logits.weight"][j]
        )
        deltas = official["rpn.head.bbox_pred.bias"].reshape(-1, 4)[j]
        assert torch.equal(out[head + "anchor_deltas.bias"].reshape(-1, 4)[i], deltas)


def test_official_anchor_generator_matches_maskrcnn_benchmark():
    # generate_anchors(16, (32, ..., 512), (0.5, 1, 2)), rows 0 and 5 (anchor_generator.py)
    anchors = official_cell_anchors(16, (32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
    assert anchors.shape == (15, 4)
    assert anchors[0].tolist() == [-15.0, -4.0, 30.0, 19.0]
    assert anchors[5].tolist() == [-8.0, -8.0, 23.0, 23.0]


def test_student_converts_loads_strictly_and_detects(student):
    cfg, model = student
    official = official_xpm_state(cfg, model.bert.table, student=True)
    out, report = convert_checkpoint("xpm", official, cfg, model=model)
    assert set(report.used) | set(report.dropped) == set(official)
    model.load_state_dict(out, strict=True)
    p = "roi_heads_student.mask.predictor.uncertain_pred.weight"
    assert report.used[p] == "roi_heads.mask_head.noise.conv.weight"
    assert report.used["roi_heads_student.box.predictor.emb_pred.bias"].startswith("roi_heads.")
    assert "frozen teacher" in report.dropped["roi_heads.box.predictor.emb_pred.bias"]
    assert {"bert.embeddings", "lambda_exemplar"} <= set(report.dropped)
    (bert,) = report.teacher
    assert bert.ok(0.0) and bert.official == "bert.embeddings"
    assert bool(model.roi_heads.mask_head.noise.frozen)
    with torch.no_grad():
        (res,) = model(
            [{"image": torch.randint(0, 255, (3, 64, 64)), "vocabulary": ["cat", "dog"]}]
        )
    assert res["instances"].scores.numel() <= cfg.TEST.DETECTIONS_PER_IMAGE


def test_student_bert_mismatch_is_refused(student):
    cfg, model = student
    official = official_xpm_state(cfg, model.bert.table + 1, student=True)
    with pytest.raises(ConversionError, match="bert.embeddings.*BERT_NAME"):
        convert_checkpoint("xpm", official, cfg, model=model)


def test_refusals_name_what_is_wrong(teacher, student, tmp_path, bert):
    cfg, model = teacher
    official = official_xpm_state(cfg)
    with pytest.raises(ConversionError, match=r"rpn\.head\.extra\.weight.*no rule"):
        convert_checkpoint("xpm", {**official, "rpn.head.extra.weight": torch.ones(1)})
    learned = {**official, "roi_heads.box.predictor.cls_score.weight": torch.ones(3, 4)}
    with pytest.raises(ConversionError, match="cls_score.*learned classifier"):
        convert_checkpoint("xpm", learned)
    with pytest.raises(ConversionError, match="XPMTeacher.*TEACHER_WEIGHTS"):
        convert_checkpoint("xpm", official, student[0], model=student[1])
    clip_cfg, clip_model = _built(tmp_path, "XPMTeacher", bert, "MODEL.XPM.CLASS_EMBEDDING", "clip")
    with pytest.raises(ConversionError, match="CLASS_EMBEDDING bert"):
        convert_checkpoint("xpm", official, clip_cfg, model=clip_model)
    other = cfg.clone()
    other.MODEL.ANCHOR_GENERATOR.SIZES = [[8, 16, 64]]
    with pytest.raises(ConversionError, match="ANCHOR_GENERATOR.SIZES"):
        convert_checkpoint("xpm", official, other, model=model)
    unshared = dict(official)
    unshared["roi_heads.mask.feature_extractor.head.layer4.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="mask head's res5 differs"):
        convert_checkpoint("xpm", unshared)


def test_command_line_reads_a_maskrcnn_benchmark_checkpoint(teacher, tmp_path, capsys):
    cfg, _ = teacher
    path = tmp_path / "model_final.pth"
    torch.save({"model": official_xpm_state(cfg), "optimizer": {}, "iteration": 90000}, path)
    out = tmp_path / "ovseg.pth"
    assert main(["--method", "xpm", "--input", str(path), "--output", str(out)]) == 0
    assert "teacher (GeneralizedRCNN)" in capsys.readouterr().out
    assert "roi_heads.box_predictor.projection.weight" in torch.load(out)["model"]


def _constant_deltas(official: dict, rpn, roi) -> dict:
    """``official`` with every RPN anchor regressing by ``rpn`` and every RoI by ``roi``
    (zero weights, those biases), so the boxes each convention makes are known."""
    out = dict(official)
    w = out["rpn.head.bbox_pred.weight"]
    out["rpn.head.bbox_pred.weight"] = torch.zeros_like(w)
    out["rpn.head.bbox_pred.bias"] = torch.tensor(rpn).repeat(w.shape[0] // 4)
    p = "roi_heads.box.predictor.bbox_pred."
    out[p + "weight"] = torch.zeros_like(out[p + "weight"])
    out[p + "bias"] = torch.tensor([0.0] * 4 + list(roi))
    return out


def _member(boxes, candidates) -> torch.Tensor:
    """(R,) whether each box is one of the candidates (to 1e-3)."""
    return ((boxes[:, None] - candidates[None]).abs().amax(-1) < 1e-3).any(1)


def test_legacy_boxes_evaluate_a_converted_teacher_as_maskrcnn_benchmark(tmp_path, bert):
    """A converted teacher with MODEL.XPM.LEGACY_BOXES: its detections are the official
    anchors, +1-decoded by the RPN and the RoI head, clipped to size - 1, +1-NMS'd, output
    with exclusive corners; without the key, detectron2's; never one box in both."""
    rpn, roi = (0.2, -0.1, 0.3, -0.2), (1.0, -2.0, 0.5, 0.8)
    opts = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    legacy_cfg, legacy = _built(
        tmp_path, "XPMTeacher", bert, *opts, "MODEL.XPM.LEGACY_BOXES", "True"
    )
    cfg, exact = _built(tmp_path, "XPMTeacher", bert, *opts)
    official = _constant_deltas(official_xpm_state(cfg, seed=2), rpn, roi)
    for c, model in ((legacy_cfg, legacy), (cfg, exact)):
        out, report = convert_checkpoint("xpm", official, c, model=model)
        model.load_state_dict(out, strict=True)
        assert any("LEGACY_BOXES True" in n for n in report.notes) != (model is legacy)
    inp = {"image": torch.randint(0, 255, (3, 64, 64), generator=torch.Generator().manual_seed(3)),
           "vocabulary": ["cat", "dog"]}  # fmt: skip
    with torch.no_grad():
        (got,) = legacy([inp])
        (want_exact,) = exact([inp])
    gen = cfg.MODEL.ANCHOR_GENERATOR
    weights = cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS
    anchors = ref.grid_anchors(
        official_cell_anchors(16, gen.SIZES[0], gen.ASPECT_RATIOS[0]), 16, 4, 4
    )
    props = ref.clip(
        ref.decode(torch.tensor([rpn]).expand(len(anchors), 4), anchors, (1.0,) * 4), 64, 64
    )
    boxes = ref.clip(ref.decode(torch.tensor([roi]).expand(len(props), 4), props, weights), 64, 64)
    official_out = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0])  # coco_eval.py:83's x2 - x1 + 1
    (d2_anchors,) = exact.proposal_generator.anchor_generator([torch.zeros(1, 1, 4, 4)])
    d2_props = Box2BoxTransform((1.0,) * 4).apply_deltas(
        torch.tensor([rpn]).expand(len(d2_anchors), 4), d2_anchors.tensor).clamp(0, 64)  # fmt: skip
    d2_boxes = Box2BoxTransform(weights).apply_deltas(
        torch.tensor([roi]).expand(len(d2_props), 4), d2_props).clamp(0, 64)  # fmt: skip
    mine, theirs = got["instances"], want_exact["instances"]
    assert len(mine) > 5 and len(theirs) > 5
    assert _member(mine.pred_boxes.tensor, official_out).all()
    assert _member(theirs.pred_boxes.tensor, d2_boxes).all()
    assert not _member(mine.pred_boxes.tensor, d2_boxes).any()
    # the +1 NMS: no two kept boxes of a class overlap by +1 IoU > 0.5
    inclusive = mine.pred_boxes.tensor - torch.tensor([0.0, 0.0, 1.0, 1.0])
    for k in mine.pred_classes.unique():
        b = inclusive[mine.pred_classes == k]
        assert (ref.iou(b, b) - torch.eye(len(b))).max() <= 0.5
    # masks: the official Masker's paste of the mask head's probabilities, > 0.5
    with torch.no_grad():
        features = legacy.backbone(legacy.images([inp]).tensor)
        (probs,) = legacy.roi_heads.mask_probabilities(features, [Boxes(inclusive)])
    pasted = torch.stack([ref.paste(p, b, 64, 64) for p, b in zip(probs, inclusive)])
    assert torch.equal(mine.pred_masks, pasted > 0.5)


@pytest.mark.parametrize("arch", ["XPMTeacher", "XPMStudent"])
def test_official_checkpoint_leaf_converts_as_released_and_loads_for_eval(
    tmp_path, bert, capsys, arch
):
    """The leaf's own commands at the tiny size: its convert command finds every release
    setting in place (nothing noted) and writes the MODEL.WEIGHTS its --eval-only reads."""
    who = arch[3:].lower()
    leaf = ROOT / f"configs/coco/xpm/xpm_{who}_bert_official-checkpoint_eval.yaml"
    out = tmp_path / "converted.pth"
    opts = [*cpu_opts(arch, tmp_path / "clip"), *tiny_clip_opts(), "MODEL.WEIGHTS", str(out),
            "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.BACKBONE.FREEZE_AT", "2",
            "MODEL.XPM.BERT_NAME", bert]  # fmt: skip
    cfg = load_config(str(leaf), opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    student = arch == "XPMStudent"
    official = official_xpm_state(cfg, model.bert.table if student else None, student=student)
    torch.save({"model": official, "iteration": 90000}, tmp_path / "model_final.pth")
    argv = ["--method", "xpm", "--input", str(tmp_path / "model_final.pth"), "--output"]
    assert main([*argv, str(out), "--config-file", str(leaf), *opts]) == 0
    printed = capsys.readouterr().out
    assert "LEGACY_BOXES True" in printed and "computes otherwise" not in printed, printed
    checkpointer = AtomicCheckpointer(model, save_dir=str(tmp_path), complete=True)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)  # every weight from it
    state = model.state_dict()
    assert torch.equal(
        state["roi_heads.box_predictor.projection.weight"],
        official[
            ("roi_heads_student." if student else "roi_heads.") + "box.predictor.emb_pred.weight"
        ],
    )
