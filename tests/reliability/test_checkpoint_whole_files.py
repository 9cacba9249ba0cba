"""Files without ovseg's record that still hold a whole model are complete by construction:
a converted official model (its conversion report says it fit the config's whole model) and
a checkpoint of ovseg's Trainer without the record (trainer/iteration entries and the data
position and RNG states detectron2's trainer does not write). A tensor missing from one used
to stay at its random initialisation with one fvcore warning where a file only had to fit in
part: a training start, pseudo-labelling, the synonym study. A checkpoint of detectron2's own
DefaultTrainer (trainer/iteration only) still initialises part of a model."""

from __future__ import annotations

import pytest
import torch
from ovseg_testing import CONFIGS, registered_toy_world, tiny_zegclip
from ovseg_testing.logs import records

from detectron2.modeling import build_model

from ovseg.convert import resnet_v1c, zegclip
from ovseg.convert.command import METHODS
from ovseg.convert.core import ConversionReport
from ovseg.engine import AtomicCheckpointer
from ovseg.engine.checkpoint import load_model_weights
from ovseg.engine.checkpoint_fit import CheckpointMismatchError
from ovseg.engine.defaults import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GONE = "decoder.layers.0.cross_attn.q.weight"


def _converted(method: str, **report) -> dict:
    return {"conversion": ConversionReport(method, **report).to_dict()}


def _pre_meta() -> dict:  # what a checkpoint of ovseg's Trainer holds besides "ovseg_meta"
    return {"trainer": {"iteration": 599}, "iteration": 599, "data": {"seed": 3, "batch_size": 2}}


def _detectron2_run() -> dict:  # what detectron2's DefaultTrainer saves besides "model"
    return {"trainer": {"iteration": 11, "hooks": {"LRScheduler": {}}}, "iteration": 11}


def _file(model, folder, name: str, extra: dict, drop: str = GONE) -> str:
    state = {k: v for k, v in model.state_dict().items() if k != drop}
    path = folder / f"{name}.pth"
    torch.save({"model": state, **extra}, path)
    return str(path)


@pytest.mark.parametrize(
    "extra, says",
    [
        (_converted(zegclip.METHOD, checked_model=True), "a converted ZegCLIP checkpoint"),
        (_pre_meta(), "a training run's checkpoint of ovseg's Trainer that records no ovseg"),
    ],
    ids=["converted", "pre-meta"],
)
def test_a_whole_model_file_missing_a_tensor_is_refused_everywhere(extra, says, tmp_path):
    model = tiny_zegclip(tmp_path / "cache")
    path = _file(model, tmp_path, "partial", extra)
    loads = {
        "training start": lambda m: AtomicCheckpointer(m, str(tmp_path / "run")).resume_or_load(
            path, resume=False
        ),
        "pseudo-labelling": lambda m: load_model_weights(m, path, complete=False, some=False),
        "evaluation": lambda m: load_model_weights(m, path),
    }
    for what, load in loads.items():
        with pytest.raises(CheckpointMismatchError) as err:
            load(tiny_zegclip(tmp_path / "cache", seed=1))
        message = str(err.value)
        assert says in message and f"missing: {GONE}" in message, (what, message)
    # whole, they load in every way
    whole = _file(model, tmp_path, "whole", extra, drop="")
    target = tiny_zegclip(tmp_path / "cache", seed=1)
    AtomicCheckpointer(target, str(tmp_path / "run")).resume_or_load(whole, resume=False)
    assert torch.equal(target.state_dict()[GONE], model.state_dict()[GONE])


@pytest.mark.parametrize(
    "extra",
    [
        _converted(resnet_v1c.METHOD, checked_model=True),  # a backbone: part of a model
        _converted("OVR-CNN", checked_model=True, fresh={GONE: "built fresh, as the official"}),
        _converted(zegclip.METHOD),  # converted without --config-file: never checked whole
        {"__author__": "converter"},
        _detectron2_run(),  # was refused as "an older ovseg's: a whole model"
    ],
    ids=["backbone", "fresh-parts", "unchecked", "no-record", "detectron2-run"],
)
def test_files_of_part_of_a_model_still_initialise_it(extra, tmp_path):
    model = tiny_zegclip(tmp_path / "cache")
    path = _file(model, tmp_path, "part", extra)
    with records("fvcore.common.checkpoint") as got:
        AtomicCheckpointer(tiny_zegclip(tmp_path / "cache", seed=1), str(tmp_path)).resume_or_load(
            path, resume=False
        )
    assert any(GONE in r.getMessage() for r in got), [r.getMessage() for r in got]


def test_every_partial_conversion_is_known_as_such():
    from ovseg.engine.checkpoint_fit import PARTIAL_CONVERSIONS

    # a method whose result gives only the keys under a prefix (a backbone) writes files
    # that initialise part of a model: their report's method must be known as partial
    partial = [name for name, method in METHODS.items() if method.part]
    assert partial == ["resnet_v1c"], partial
    assert resnet_v1c.METHOD in PARTIAL_CONVERSIONS


def test_the_synonym_study_refuses_a_partial_checkpoint(tmp_path, monkeypatch):
    # it evaluates the file's model: every weight must come from it
    from ovseg.evaluation import synonym_study

    config = str(CONFIGS / "toy/zegclip_toyvit_inductive_1200_bs16.yaml")
    monkeypatch.setattr(
        "ovseg.engine.Trainer.test", lambda *a, **k: pytest.fail("evaluated a partial checkpoint")
    )
    with registered_toy_world(tmp_path / "data", num_train=1, num_val=1):
        monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
        model = build_model(load_config(config, ["MODEL.DEVICE", "cpu"]))
        path = _file(model, tmp_path, "partial", _pre_meta())
        with pytest.raises(CheckpointMismatchError, match=f"missing: {GONE}"):
            synonym_study.study(config, path, ["MODEL.DEVICE", "cpu"])
