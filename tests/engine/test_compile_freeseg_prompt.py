"""MODEL.COMPILE on FreeSeg: the prompt learner's string and tokenizer work (one Python
string per class name) must not be traced, or every class name is a recompilation (and a
vocabulary of more than 8 names hits dynamo's recompile limit within one step)."""

import pytest
import torch
from ovseg_testing.models import tiny_freeseg_cfg

from detectron2.modeling import build_model

from ovseg.engine.speed import compile_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["cat", "dog", "sky", "tree", "road", "car", "bus", "person", "grass", "wall", "sea"]


def test_compiled_prompt_learner_does_not_recompile_per_class_name(tmp_path):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(tiny_freeseg_cfg(tmp_path)).train()
    want = model.prompt(NAMES, "semantic segmentation.").detach()
    assert "prompt" in compile_model(model, backend="eager")  # tracing only: cheap on a CPU
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = model.prompt(NAMES, "semantic segmentation.")  # training: recomputed with gradients
        again = model.prompt(NAMES, "semantic segmentation.")
    torch.testing.assert_close(got.detach(), want)
    torch.testing.assert_close(again.detach(), want)
