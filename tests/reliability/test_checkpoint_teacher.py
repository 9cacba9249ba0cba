"""A checkpoint records its CLIP teacher and its training config. Evaluating it with another
CLIP of the same shapes (another file or tag of one open_clip model) used to load as complete
and report other numbers without a word; it is refused now, naming both teachers and the
override. MODEL settings that change outputs without changing shapes are named in a warning;
a run's config.yaml names its CLIP file absolute, and the log names the file read."""

from __future__ import annotations

import json
import logging
import shutil

import open_clip
import pytest
import torch
import yaml
from ovseg_testing import (
    CONFIGS,
    TINY_VIT,
    random_clip_model,
    tiny_maskclip_plus_cfg,
    tiny_zegclip_cfg,
)
from ovseg_testing.logs import records

from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

from ovseg.engine import AtomicCheckpointer, setup
from ovseg.engine.checkpoint import load_model_weights
from ovseg.engine.checkpoint_fit import CheckpointMismatchError
from ovseg.modeling.meta_arch.maskclip_plus import MaskCLIPPlus

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECORD = "ovseg.engine.checkpoint_record"


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """Two open_clip checkpoints of the tiny CLIP ViT: other weights, the same shapes."""
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for seed in (0, 1):
        model, _, _ = random_clip_model(TINY_VIT, seed=seed)
        paths.append(folder / f"clip_{seed}.pt")
        torch.save(model.state_dict(), paths[-1])
    return paths


def _cfg(cache, clip="", **zegclip):
    cfg = tiny_zegclip_cfg(cache, **zegclip)
    cfg.MODEL.CLIP.PRETRAINED = str(clip)
    return cfg


def _trained(cfg, folder) -> str:
    torch.manual_seed(0)
    AtomicCheckpointer(build_model(cfg), str(folder), cfg=cfg).save("model_final")
    return str(folder / "model_final.pth")


def test_a_checkpoint_records_its_teacher_and_config(clip_files, tmp_path):
    cfg = _cfg(tmp_path / "cache", clip_files[0])
    meta = torch.load(_trained(cfg, tmp_path), weights_only=True)["ovseg_meta"]
    teacher = meta["clip_teacher"]
    assert teacher["source"] == str(clip_files[0]) and teacher["weights"].startswith("tensors:")
    assert teacher["model"] == "tiny_vit" and len(teacher["fingerprint"]) == 64
    assert "PATCH_STRIDE" in meta["config"]


def test_another_clip_of_the_same_shapes_is_refused(clip_files, tmp_path):
    path = _trained(_cfg(tmp_path / "cache", clip_files[0]), tmp_path)
    other = _cfg(tmp_path / "cache", clip_files[1])
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_weights(build_model(other), path, cfg=other)
    message = str(err.value)
    assert str(clip_files[0]) in message and str(clip_files[1]) in message, message
    assert "other CLIP weights of the same model" in message, message
    assert "MODEL.CLIP.ALLOW_TEACHER_MISMATCH True" in message and "\n" not in message
    # a training start from the checkpoint too (it is the whole model of its run)
    with pytest.raises(CheckpointMismatchError, match="other CLIP weights"):
        AtomicCheckpointer(build_model(other), str(tmp_path / "run"), cfg=other).resume_or_load(
            path, resume=False
        )
    # the override: a warning naming both
    other.MODEL.CLIP.ALLOW_TEACHER_MISMATCH = True
    with records(RECORD) as got:
        load_model_weights(build_model(other), path, cfg=other)
    assert any(str(clip_files[1]) in r.getMessage() for r in got), got


def test_the_same_clip_elsewhere_or_another_model_config(clip_files, tmp_path):
    path = _trained(_cfg(tmp_path / "cache", clip_files[0]), tmp_path)
    moved = tmp_path / "moved" / "renamed.pt"  # the same weights at another path: its content
    moved.parent.mkdir()
    shutil.copy(clip_files[0], moved)
    same = _cfg(tmp_path / "cache", moved)
    load_model_weights(build_model(same), path, cfg=same)
    # a random CLIP cannot be rebuilt in another process: only its model is compared
    random = _cfg(tmp_path / "cache")
    path = _trained(random, tmp_path / "random")
    load_model_weights(build_model(random), path, cfg=random)


def test_the_same_tensors_from_another_file_or_a_tag_load(clip_files, tmp_path, monkeypatch):
    # the toy CLIP retrained (make demo's RETRAIN_CLIP) gives the same tensors in a file of
    # other bytes (its ovseg_pretrain train_seconds): it was refused as other weights
    state = torch.load(clip_files[0], weights_only=True)
    files = [tmp_path / f"clip_{seconds}.pt" for seconds in (357.8, 361.2)]
    for seconds, file in zip((357.8, 361.2), files):
        torch.save({"state_dict": state, "ovseg_pretrain": {"train_seconds": seconds}}, file)
    path = _trained(_cfg(tmp_path / "cache", files[0]), tmp_path)
    again = _cfg(tmp_path / "cache", files[1])
    load_model_weights(build_model(again), path, cfg=again)
    # an open_clip tag whose download is that file: the tag string was compared
    tag = {"mine": {"file": str(files[1])}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny_vit", tag)
    tagged = _cfg(tmp_path / "cache", "mine")
    load_model_weights(build_model(tagged), path, cfg=tagged)
    path = _trained(tagged, tmp_path / "tagged")
    load_model_weights(build_model(again), path, cfg=again)


def test_one_model_whatever_config_names_it(clip_files, tmp_path, monkeypatch):
    # ViT-B-16 with the tag "openai" (open_clip forces QuickGELU) and ViT-B-16-quickgelu with
    # the tag's file are one model; open_clip's config texts differ
    quick = tmp_path / "tiny_vit_quick.json"
    quick.write_text(json.dumps({**json.loads(TINY_VIT.read_text()), "quick_gelu": True}))
    tag = {"quick": {"file": str(clip_files[0]), "quick_gelu": True}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny_vit", tag)
    path = _trained(_cfg(tmp_path / "cache", "quick"), tmp_path)
    named = _cfg(tmp_path / "cache", clip_files[0])
    named.MODEL.CLIP.MODEL_NAME = str(quick)
    load_model_weights(build_model(named), path, cfg=named)
    # the same file in the model with GELU is another model
    gelu = _cfg(tmp_path / "cache", clip_files[0])
    with pytest.raises(CheckpointMismatchError, match="another CLIP model") as err:
        load_model_weights(build_model(gelu), path, cfg=gelu)
    assert "tiny_vit, QuickGELU (quick, tensors:" in str(err.value), err.value


def test_a_random_teacher_against_pretrained_weights_is_refused(clip_files, tmp_path):
    # either way round it loaded without a word: "random" on one side skipped the check
    random, pretrained = _cfg(tmp_path / "cache"), _cfg(tmp_path / "cache", clip_files[0])
    for trained, evaluated in ((random, pretrained), (pretrained, random)):
        path = _trained(trained, tmp_path / str(id(trained)))
        with pytest.raises(CheckpointMismatchError) as err:
            load_model_weights(build_model(evaluated), path, cfg=evaluated)
        message = str(err.value)
        assert "a random initialisation and pretrained weights" in message, message
        assert "random initialisation, random)" in message, message


def test_a_cast_teacher_records_its_weights_as_loaded(clip_files, tmp_path):
    from ovseg.engine.checkpoint_record import teacher_record
    from ovseg.engine.speed import cast_frozen_towers

    cfg = _cfg(tmp_path / "cache", clip_files[0])
    plain, cast = build_model(cfg), build_model(cfg)
    assert cast_frozen_towers(cast, "bfloat16") > 0
    assert teacher_record(cast)["weights"] == teacher_record(plain)["weights"]


def test_other_model_settings_are_named_in_one_warning(clip_files, tmp_path):
    path = _trained(_cfg(tmp_path / "cache", clip_files[0]), tmp_path)
    strided = _cfg(tmp_path / "cache", clip_files[0], patch_stride=8)
    with records(RECORD) as got:
        load_model_weights(build_model(strided), path, cfg=strided)
    [warning] = [r.getMessage() for r in got if "MODEL settings" in r.getMessage()]
    assert "MODEL.ZEGCLIP.PATCH_STRIDE 0 in training, 8 here" in warning, warning
    # what is chosen at test time is no change: vocabulary, prompts, calibration, device
    tested = _cfg(tmp_path / "cache", clip_files[0])
    tested.MODEL.OVSEG.TEST_VOCABULARY = "cat,dog"
    tested.MODEL.CLIP.TEMPLATES = "imagenet80"
    tested.MODEL.ZEGCLIP.CALIBRATION = 0.5
    tested.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2
    with records(RECORD) as got:
        load_model_weights(build_model(tested), path, cfg=tested)
    assert not got, [r.getMessage() for r in got]


def test_test_time_choices_are_no_change_and_name_parts_match_whole(tmp_path):
    from ovseg.engine.checkpoint_record import changed_settings

    trained = tiny_zegclip_cfg(tmp_path)
    tested = trained.clone()
    # chosen at test time (or, the mask predictor's std, at initialisation): each was named
    tested.MODEL.FREESEG.CLIP_ENSEMBLE = False
    tested.MODEL.FREESEG.CLIP_TEMPERATURE = 50.0
    tested.MODEL.FREESEG.MASK_EXPAND_RATIO = 1.2
    tested.MODEL.PANOPTIC_FPN.COMBINE.ENABLED = False
    tested.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 1024
    tested.MODEL.XPM.MASK_PREDICTOR_STD = 1.0
    assert changed_settings(trained.dump(), tested) == []
    # "DICE" (a loss weight's) was found in OUT_INDICES, which picks the decoder's blocks
    tested.MODEL.VIT_BACKBONE.OUT_INDICES = [0, 1, 2]
    changed = changed_settings(trained.dump(), tested)
    assert changed == [("MODEL.VIT_BACKBONE.OUT_INDICES", [], [0, 1, 2])], changed


def test_a_misfit_names_the_settings_that_differ(tmp_path):
    width = ("MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "32")
    trained = tiny_maskclip_plus_cfg(tmp_path / "cache", *width)
    trained.MODEL.SEM_SEG_HEAD.OUTPUT_PROJECTION = True
    torch.manual_seed(0)
    model = MaskCLIPPlus(trained, unseen=())
    AtomicCheckpointer(model, str(tmp_path), cfg=trained).save("model_final")
    plain = tiny_maskclip_plus_cfg(tmp_path / "cache", *width)
    plain.MODEL.SEM_SEG_HEAD.OUTPUT_PROJECTION = False
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_weights(MaskCLIPPlus(plain, unseen=()), str(tmp_path / "model_final.pth"))
    assert "head.predictor.bias" in str(err.value)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_weights(
            MaskCLIPPlus(plain, unseen=()), str(tmp_path / "model_final.pth"), cfg=plain
        )
    message = str(err.value)
    assert (
        "its training config differs: MODEL.SEM_SEG_HEAD.OUTPUT_PROJECTION True in training, "
        "False here"
    ) in message, message


def test_a_runs_config_names_its_clip_file_absolute(tmp_path, monkeypatch):
    # a relative PRETRAINED resolves from the working directory first: the run's config.yaml
    # used from another folder took another file of that name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(CONFIGS.parent / "checkpoints/toy_clip_vit.pt", tmp_path / "checkpoints")
    out = tmp_path / "run"
    args = default_argument_parser().parse_args(
        ["--config-file", str(CONFIGS / "toy/zegclip_toyvit_inductive_1200_bs16.yaml"),
         "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    cfg = setup(args)
    assert cfg.MODEL.CLIP.PRETRAINED == "checkpoints/toy_clip_vit.pt"
    saved = (out / "config.yaml").read_text()
    assert f"PRETRAINED: {tmp_path / 'checkpoints/toy_clip_vit.pt'}" in saved, saved
    # and the log names the file a teacher is built from
    from ovseg.clip import build_clip_teacher

    with records("ovseg.clip.build", logging.INFO) as got:
        build_clip_teacher(cfg, device="cpu")
    text = "\n".join(r.getMessage() for r in got)
    assert f"weights {tmp_path / 'checkpoints/toy_clip_vit.pt'}" in text, text


def test_a_runs_config_names_every_file_it_reads_absolute(tmp_path, monkeypatch):
    # each is read from the working directory: the prompt stage's checkpoint, a text
    # embeddings file, a JSON CLIP model config and a pseudo-label store stayed relative
    from ovseg.engine.defaults import saved_config

    monkeypatch.chdir(tmp_path)
    for name in ("prompts.pth", "rows.npy", "tiny_clip.json"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "store").mkdir()
    cfg = tiny_zegclip_cfg(tmp_path / "cache")
    cfg.MODEL.FREESEG.PROMPT_CHECKPOINT = "prompts.pth"
    cfg.MODEL.OVSEG.TEXT_EMBEDDINGS_FILE = "rows.npy"
    cfg.MODEL.CLIP.MODEL_NAME = "tiny_clip.json"
    cfg.DATASETS.PSEUDO_LABELS = "store"
    cfg.MODEL.WEIGHTS = "not_there.pth"  # a file that is not there stays as given
    saved = yaml.safe_load(saved_config(cfg))
    assert saved["MODEL"]["FREESEG"]["PROMPT_CHECKPOINT"] == str(tmp_path / "prompts.pth")
    assert saved["MODEL"]["OVSEG"]["TEXT_EMBEDDINGS_FILE"] == str(tmp_path / "rows.npy")
    assert saved["MODEL"]["CLIP"]["MODEL_NAME"] == str(tmp_path / "tiny_clip.json")
    assert saved["DATASETS"]["PSEUDO_LABELS"] == str(tmp_path / "store")
    assert saved["MODEL"]["WEIGHTS"] == "not_there.pth"
    # an open_clip name is no path, even where a file of that name exists
    (tmp_path / "ViT-B-16").write_bytes(b"")
    cfg.MODEL.CLIP.MODEL_NAME = "ViT-B-16"
    assert yaml.safe_load(saved_config(cfg))["MODEL"]["CLIP"]["MODEL_NAME"] == "ViT-B-16"
