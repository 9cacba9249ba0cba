"""Every config key means something, and a wrong value is refused in one line naming
the key (not ignored, not a traceback deep in a layer, not after training)."""

from __future__ import annotations

import pytest
from ovseg_testing import ROOT

from detectron2.config import get_cfg

from ovseg import add_ovseg_config
from ovseg.engine.checks import check_config
from ovseg.engine.defaults import load_config
from ovseg.modeling.freeseg.tasks import post_config

TOY_LSEG = str(ROOT / "configs/toy/lseg_toyrn_400_bs8.yaml")
TOY_FREESEG = str(ROOT / "configs/toy/freeseg_toyrn_alltask_2400_bs8.yaml")


def _cfg(*opts):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def test_a_renamed_key_is_one_value_error_naming_the_new_key():
    # was: yacs' bare KeyError, a 25-line traceback from train_net.py
    with pytest.raises(
        ValueError, match=r"MODEL.LSEG.TEMPLATES was renamed to MODEL.CLIP.TEMPLATES"
    ):
        load_config(TOY_LSEG, ["MODEL.LSEG.TEMPLATES", "single"])


@pytest.mark.parametrize("task", ["SEMANTIC", "INSTANCE", "PANOPTIC"])
def test_mask2former_task_switches_are_refused_with_freeseg_test_tasks(task):
    # was: defined keys read nowhere, so PANOPTIC_ON True evaluated semantic only, silently
    with pytest.raises(ValueError, match="MODEL.FREESEG.TEST_TASKS"):
        load_config(TOY_FREESEG, [f"MODEL.MASK_FORMER.TEST.{task}_ON", "True"])


@pytest.mark.parametrize(
    "key", ["MODEL.MASK_FORMER.TEST.INSTANCE_MODE", "MODEL.MASK_FORMER.TEST.PIXEL_ASSIGNMENT"]
)
def test_freeseg_post_processing_names_are_checked_when_built(key):
    # was: INSTANCE_MODE "bogus" ran "freeseg" instances silently; PIXEL_ASSIGNMENT failed
    # at the first panoptic test image, after training, without naming the key
    cfg = _cfg(key, "bogus")
    with pytest.raises(ValueError, match=key):
        post_config(cfg)
    with pytest.raises(ValueError, match=key):
        check_config(cfg)


@pytest.mark.parametrize(
    "key, value",
    [
        ("MODEL.ZEGCLIP.FOCAL_WEIGHT", "-1.0"),
        ("MODEL.ZEGCLIP.FOCAL_ALPHA", "1.5"),
        ("MODEL.ZEGCLIP.FOCAL_GAMMA", "-2.0"),
        ("MODEL.ZEGCLIP.CALIBRATION", "2.0"),
        ("MODEL.ZEGCLIP.PROMPT_DROPOUT", "1.5"),
        ("MODEL.MASKCLIP.PROMPT_DENOISE_THRESHOLD", "1.5"),
        ("MODEL.MASKCLIP_PLUS.SELF_TRAINING_THRESHOLD", "1.5"),
        ("MODEL.MASKCLIP_PLUS.DISTILL_WEIGHT", "-1.0"),
        ("MODEL.FREESEG.TEMPERATURE", "-1.0"),
        ("MODEL.FREESEG.MASK_THRESHOLD", "1.5"),
        ("MODEL.FREESEG.ENSEMBLE_WEIGHT", "1.5"),
        ("MODEL.FREESEG.INTERACTION.DROPOUT", "1.5"),
        ("MODEL.MASK_FORMER.TEST.SCORE_TEMPERATURE", "-1.0"),
        ("MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "1.5"),
        ("MODEL.XPM.PSEUDO_SCORE_THRESHOLD", "1.5"),
        ("MODEL.XPM.PSEUDO_LOSS_SCALE", "-1.0"),
        ("MODEL.XPM.BACKGROUND_WEIGHT", "-1.0"),
        ("INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", "0.0"),
        ("MODEL.DPT.NORM", "bogus"),
        ("MODEL.CLIP.PRECISION", "bogus"),
        ("MODEL.XPM.REGION_EMBEDDING", "bogus"),  # was refused only when labels were made
        ("MODEL.XPM.PSEUDO_TEXT", "bogus"),
        ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "bogus"),
        ("MODEL.COMPILE_MODE", "bogus"),
        ("MODEL.COMPILE_LOSS", "off"),  # YAML would read a bare off as False: named values
        ("TEST.SLIDE_WINDOW", "(0, 0)"),
        ("TEST.SLIDE_STRIDE", "(64,)"),
        ("TEST.SLIDE_WINDOWS_PER_FORWARD", "0"),
        ("INPUT.LSJ_SCALE_RANGE", "[0.1]"),
        # a negative multiplier trained its parameters with a negative learning rate
        ("SOLVER.BACKBONE_MULTIPLIER", "-1.0"),
        ("SOLVER.LR_MULTIPLIER", "-1.0"),
        ("SOLVER.WEIGHT_DECAY_EMBED", "-1.0"),
        ("SOLVER.POLY_LR_CONSTANT_ENDING", "1.5"),
    ],
)
def test_a_value_outside_its_key_is_refused_naming_the_key(key, value):
    # each was accepted silently, or failed later inside torch/detectron2 without the key
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_config(_cfg(key, value))


def test_defaults_and_a_shipped_config_pass():
    check_config(_cfg())
    cfg = load_config(TOY_FREESEG)
    check_config(cfg)
    check_config(cfg)


def test_the_closed_vocabulary_baseline_refuses_test_keys_it_never_reads():
    # detectron2's SemanticSegmentor reads neither: ADE20K-150's base set a sliding stride
    # "as mmseg's sliding test" that its leaves never ran
    r50 = str(ROOT / "configs/ade20k/baseline/semfpn_r50_80k_bs16.yaml")
    check_config(load_config(r50))
    for key, value in (("TEST.INFERENCE_MODE", "slide"), ("TEST.AUG.ENABLED", "True")):
        with pytest.raises(ValueError, match=f"{key}=.*SemanticSegmentor tests whole images"):
            check_config(load_config(r50, [key, value]))
