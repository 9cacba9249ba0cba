"""A checkpoint holding trained weights the model has no place for is refused where the load
must be whole (evaluation, the demo, the Predictor, --resume), not dropped with a warning:
a MaskCLIP+ trained with its output projection, evaluated without it, scored another model."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import tiny_maskclip_plus, tiny_xpm_cfg, tiny_zegclip

from detectron2.modeling import build_model

from ovseg.engine import AtomicCheckpointer
from ovseg.engine.checkpoint import load_model_weights
from ovseg.engine.checkpoint_fit import CheckpointMismatchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the ASPP as wide as the tiny CLIP's embeddings: the projection adds weights, changes no shape
WIDTH = ("MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "32")
PROJECTION = (*WIDTH, "MODEL.SEM_SEG_HEAD.OUTPUT_PROJECTION", "True")
PLAIN = (*WIDTH, "MODEL.SEM_SEG_HEAD.OUTPUT_PROJECTION", "False")


def _save(model, folder, name="model_final"):
    AtomicCheckpointer(model, str(folder)).save(name)
    return str(folder / f"{name}.pth")


def test_trained_weights_the_model_would_drop_are_refused(tmp_path):
    trained = tiny_maskclip_plus(tmp_path / "cache", *PROJECTION)
    path = _save(trained, tmp_path)
    assert any(k.startswith("head.predictor.") for k in torch.load(path)["model"])
    plain = tiny_maskclip_plus(tmp_path / "cache", *PLAIN)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_weights(plain, path)
    message = str(err.value)
    assert "2 of the file's" in message and "no place in the model" in message, message
    assert "head.predictor.bias, head.predictor.weight" in message, message
    assert "missing" not in message, message
    # the same config loads it (and the partial-initialisation path still takes it in part)
    load_model_weights(tiny_maskclip_plus(tmp_path / "cache", *PROJECTION), path)
    load_model_weights(plain, path, complete=False, some=False)


def test_a_resume_refuses_them_too(tmp_path):
    trained = tiny_maskclip_plus(tmp_path / "cache", *PROJECTION)
    _save(trained, tmp_path, "model_0000009")
    plain = tiny_maskclip_plus(tmp_path / "cache", *PLAIN)
    with pytest.raises(CheckpointMismatchError, match="no place in the model"):
        AtomicCheckpointer(plain, str(tmp_path)).resume_or_load("", resume=True)


def test_legitimately_extra_keys_still_load(tmp_path):
    # the frozen CLIP's weights, in a file saved before they were kept out of checkpoints,
    # and BatchNorm counters a frozen norm has no place for
    model = tiny_zegclip(tmp_path / "cache")
    state = dict(model.state_dict())
    teacher = {f"teacher.model.{k}": v for k, v in model.teacher.model.state_dict().items()}
    path, meta = tmp_path / "with_clip.pth", {"meta_architecture": "ZegCLIP"}
    torch.save({"model": {**state, **teacher}, "ovseg_meta": meta}, path)
    load_model_weights(tiny_zegclip(tmp_path / "cache", seed=1), str(path))
    state["backbone.some_frozen_norm.num_batches_tracked"] = torch.tensor(3)
    torch.save({"model": state, "ovseg_meta": meta}, path)
    load_model_weights(tiny_zegclip(tmp_path / "cache", seed=1), str(path))


def test_an_xpm_teacher_takes_a_students_checkpoint(tmp_path):
    # a student's checkpoint used as MODEL.XPM.TEACHER_WEIGHTS (its detector proposes): the
    # noise head and its sigma are the student's training-only parts
    torch.manual_seed(0)
    student = build_model(tiny_xpm_cfg(tmp_path / "cache", "XPMStudent"))
    path = _save(student, tmp_path)
    extra = set(torch.load(path)["model"]) - set(
        build_model(tiny_xpm_cfg(tmp_path / "cache")).state_dict()
    )
    assert extra == {
        "last_mean_sigma",
        "roi_heads.mask_head.noise.conv.bias",
        "roi_heads.mask_head.noise.conv.weight",
        "roi_heads.mask_head.noise.frozen",
    }, extra
    load_model_weights(build_model(tiny_xpm_cfg(tmp_path / "cache")), path)


def test_weights_of_other_shapes_are_not_also_counted_missing(tmp_path):
    # fvcore takes mis-shaped tensors out before loading, so torch reported them missing too:
    # "40 of 44 missing ... 40 have other shapes" named the same tensors twice
    wide = (*PROJECTION[2:], "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16")
    path = _save(tiny_maskclip_plus(tmp_path / "cache", *wide), tmp_path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_weights(tiny_maskclip_plus(tmp_path / "cache", *PROJECTION), path)
    message = str(err.value)
    assert "missing" not in message, message
    assert "21 of the model's" in message and "weights have other shapes" in message, message
