"""The step's shares: the frozen forward timed where hooks run, and said where they do not."""

import itertools

import torch
from ovseg_testing.data import two_region_batch
from ovseg_testing.models import tiny_zegclip

from detectron2.utils.events import EventStorage

from ovseg.benchmark.shares import compiled_modules, frozen_modules, step_shares
from ovseg.engine.speed import compile_model
from ovseg.engine.train_loop import OvsegSimpleTrainer


def _shares(model):
    params = [p for p in model.parameters() if p.requires_grad]
    data = itertools.repeat(two_region_batch(size=32))
    trainer = OvsegSimpleTrainer(model, data, torch.optim.SGD(params, lr=0.01))
    with EventStorage(0):
        trainer.run_step()
        return step_shares(trainer, torch.device("cpu"), steps=1)


def test_a_compiled_towers_frozen_forward_has_no_share_of_its_own(tmp_path):
    """MODEL.COMPILE compiles the prompted tower whole: forward hooks added to its frozen
    blocks afterwards do not run inside the graph (or recompile it around timers), so the
    share is None with the reason, not the 0 (or the recompiled graph's time) they would
    give; the optimizer's share is still timed. Eager, the blocks are timed."""
    eager = _shares(tiny_zegclip(tmp_path))
    assert 0 < eager["frozen_forward_share"] < 1 and eager["frozen_forward_note"] == ""
    model = tiny_zegclip(tmp_path)
    assert compiled_modules(model) == set()
    compile_model(model, backend="aot_eager")
    inside = compiled_modules(model)
    blocks = [m for m in frozen_modules(model) if id(m) in inside]
    assert len(blocks) >= 2  # the tower's frozen blocks, inside the compiled backbone
    compiled = _shares(model)
    assert compiled["frozen_forward_share"] is None and compiled["frozen_modules"] == 0
    assert (
        f"{len(blocks)} frozen modules run inside a compiled module"
        in (compiled["frozen_forward_note"])
    )
    assert 0 < compiled["optimizer_share"] < 1
