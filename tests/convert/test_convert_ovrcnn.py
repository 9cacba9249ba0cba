"""ovseg.convert for OVR-CNN's caption pre-training (--method ovrcnn): a state dict in its
checkpoint's layout (tiny widths, random values) becomes the XPM teacher's starting weights
exactly as the official checkpointer loads it into the official teacher (its suffix matching
written out, then the official teacher's names converted as --method xpm does); the heads the
release builds fresh are the only ones left to the model; the projection stays frozen in
training; detector checkpoints and unknown layouts are refused by name."""

from __future__ import annotations

import pytest
import torch
from official_ovrcnn import official_ovrcnn_state, release_load
from official_xpm import official_opts, official_xpm_state
from ovseg_testing import tiny_xpm_cfg, xpm_batch
from ovseg_testing.bert import make_tiny_bert, require_transformers

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ovseg.convert import ConversionError, convert_checkpoint
from ovseg.convert.command import main
from ovseg.convert.xpm import convert_xpm
from ovseg.engine.checkpoint import load_model_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")
require_transformers()

# the official teacher's loading options (configs/coco_cap_det/zeroshot_mask.yaml:8, 11)
REPLACE = {
    "backbone.body.": "",
    "mmss_heads.GroundingHead.v2l_projection": "roi_heads.box.predictor.emb_pred",
}
FRESH = ("proposal_generator.rpn_head.", "roi_heads.box_predictor.bbox_pred.",
         "roi_heads.mask_head.")  # fmt: skip


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


def _teacher(tmp, bert: str, *opts: str):
    """A tiny XPM teacher as the paper's run trains it (FrozenBN, MSRA strides, caffe BGR
    statistics, BERT classes, frozen projection, +1-pixel boxes)."""
    cfg = tiny_xpm_cfg(
        tmp, "XPMTeacher",
        *official_opts(bert),
        "MODEL.XPM.FREEZE_PROJECTION", "True",
        "MODEL.XPM.LEGACY_BOXES", "True",
        *opts,
    )  # fmt: skip
    torch.manual_seed(0)
    return cfg, build_model(cfg)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, bert):
    return _teacher(tmp_path_factory.mktemp("clip"), bert)


def test_converts_as_the_official_checkpointer_loads_it(teacher, tmp_path, capsys):
    cfg, model = teacher
    saved = official_ovrcnn_state(cfg, model.bert.table)
    path = tmp_path / "model_0040000.pth"
    torch.save({"model": saved, "optimizer": {}, "iteration": 40000}, path)
    out = tmp_path / "start.pth"
    opts = ["--config-file", "", "--method", "ovrcnn", "--input", str(path), "--output", str(out)]
    with pytest.MonkeyPatch.context() as mp:  # the tiny config is built here, not read
        mp.setattr("ovseg.engine.defaults.load_config", lambda *a, **k: cfg)
        opts[1] = "tiny.yaml"
        assert main(opts) == 0
    printed = capsys.readouterr().out
    assert "left to the model's initialisation" in printed and "computes otherwise" not in printed
    mine = torch.load(out)["model"]

    # the release: the official teacher's keys loaded by its suffix matching, its names then
    # converted as an official teacher checkpoint is
    official_teacher = official_xpm_state(cfg)
    stripped = {k[len("module.") :]: v for k, v in saved.items()}
    loaded = release_load(official_teacher, saved, REPLACE)
    assert loaded["roi_heads.box.feature_extractor.head.layer4.1.conv2.weight"] == (
        "backbone.body.layer4.1.conv2.weight"
    )  # res5 from pre-training, not ImageNet
    assert loaded["roi_heads.box.predictor.emb_pred.bias"] == (
        "mmss_heads.GroundingHead.v2l_projection.bias"
    )
    started = {**official_teacher, **{k: stripped[s] for k, s in loaded.items()}}
    release, _ = convert_xpm(started)
    assert set(mine) == {k for k in release if not k.startswith(FRESH)}
    for key, value in mine.items():
        assert torch.equal(value, release[key]), key
    # what the release leaves unloaded is exactly what ours leaves to the model
    unloaded = {k for k in official_teacher if k not in loaded}
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in unloaded} == {
        "rpn.head", "rpn.anchor_generator", "roi_heads.box", "roi_heads.mask"
    }  # fmt: skip
    assert all(".predictor." in k for k in unloaded if k.startswith("roi_heads"))
    assert not any("emb_pred" in k for k in unloaded)


def test_starting_weights_load_for_training_with_the_fresh_heads_untouched(teacher, tmp_path):
    cfg, model = teacher
    official = official_ovrcnn_state(cfg, model.bert.table)
    converted, report = convert_checkpoint("ovrcnn", {k[7:]: v for k, v in official.items()}, cfg,
                                           model=model)  # fmt: skip
    assert set(report.fresh) == {k for k in model.state_dict() if k.startswith(FRESH)}
    path = tmp_path / "start.pth"
    torch.save({"model": converted}, path)
    torch.manual_seed(1)
    fresh = build_model(cfg)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    load_model_weights(fresh, str(path), complete=False)  # as training loads MODEL.WEIGHTS
    for key, value in fresh.state_dict().items():
        want = before[key] if key.startswith(FRESH) else converted[key]
        assert torch.equal(value, want), key
    v2l = official["module.mmss_heads.GroundingHead.v2l_projection.weight"]
    assert torch.equal(fresh.roi_heads.box_predictor.projection.weight, v2l)
    assert torch.equal(fresh.backbone.stem.conv1.weight,
                       official["module.backbone.body.stem.conv1.weight"].flip(1))  # fmt: skip


def test_the_frozen_projection_does_not_move_in_a_training_step(teacher):
    cfg, model = teacher
    model.train()
    projection = model.roi_heads.box_predictor.projection
    assert not any(p.requires_grad for p in projection.parameters())
    watched = {"projection": projection.weight, "res5": model.roi_heads.res5[0].conv1.weight,
               "bbox_pred": model.roi_heads.box_predictor.bbox_pred.weight}  # fmt: skip
    before = {k: v.detach().clone() for k, v in watched.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    with EventStorage(0):
        losses = model(xpm_batch(pseudo=False))
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    assert torch.equal(watched["projection"], before["projection"])
    assert not torch.equal(watched["res5"], before["res5"])
    assert not torch.equal(watched["bbox_pred"], before["bbox_pred"])
    model.eval()


def test_refusals_name_what_is_wrong(teacher, tmp_path, bert):
    cfg, model = teacher
    official = {k[7:]: v for k, v in official_ovrcnn_state(cfg, model.bert.table).items()}
    with pytest.raises(ConversionError, match="detector.*--method xpm"):
        convert_checkpoint("ovrcnn", official_xpm_state(cfg))
    with pytest.raises(ConversionError, match=r"mmss_heads\.Other\.w.*no rule"):
        convert_checkpoint("ovrcnn", {**official, "mmss_heads.Other.w": torch.ones(1)})
    no_projection = {k: v for k, v in official.items() if "GroundingHead" not in k}
    with pytest.raises(ConversionError, match="lacks.*v2l_projection"):
        convert_checkpoint("ovrcnn", no_projection)
    no_layer4 = {k: v for k, v in official.items() if ".layer4." not in k}
    with pytest.raises(ConversionError, match="lacks.*layer4"):
        convert_checkpoint("ovrcnn", no_layer4)
    clip_cfg, clip_model = _teacher(tmp_path, bert, "MODEL.XPM.CLASS_EMBEDDING", "clip")
    with pytest.raises(ConversionError, match="CLASS_EMBEDDING bert"):
        convert_checkpoint("ovrcnn", official, clip_cfg, model=clip_model)
    student = cfg.clone()
    student.MODEL.META_ARCHITECTURE = "XPMStudent"
    with pytest.raises(ConversionError, match="XPMTeacher"):
        convert_checkpoint("ovrcnn", official, student, model=model)
