"""FreeSeg's test-time prompt tuning on the tiny model: the class-context tokens move while an
image is tuned and the unseen-class entropy falls, then the tokens are restored; the network
and the task tokens never move; inference with it stays per image."""

from __future__ import annotations

import math

import pytest
import torch
from ovseg_testing import tiny_freeseg_cfg

from detectron2.modeling import build_model
from detectron2.structures import ImageList

from ovseg.modeling.freeseg.test_time import TestTimePromptTuning, unseen_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["red thing", "green thing", "sky", "grass"]
TTPT = ["MODEL.FREESEG.TEST_PROMPT_TUNING.ENABLED", "True"]


def _image(seed: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    image = torch.zeros(3, size, size)
    image[2, : size // 2] = 200
    image[0, size // 2 :, : size // 2] = 220
    image[1, size // 2 :, size // 2 :] = 200
    return (image + torch.randint(0, 40, image.shape, generator=g)).clamp(0, 255)


def _model(tmp_path, *opts):
    torch.manual_seed(0)
    model = build_model(tiny_freeseg_cfg(tmp_path / "clip_cache", *opts))
    model.seen_classes = frozenset({"red thing"})  # three unseen classes
    model.clip_ensemble = False
    return model.eval()


def _pixels(model, image):
    images = ImageList.from_tensors(model.normalize([image]), model.size_divisibility)
    with torch.no_grad():
        return model.pixel_features(images.tensor)


def test_unseen_entropy_keeps_the_confident_queries():
    logits = torch.tensor([[9.0, 0.0, 0.0, 5.0], [0.0, 1.0, 1.0, 0.0], [3.0, 0.0, 9.0, 0.0]])
    unseen = torch.tensor([False, True, True])
    # unseen parts: [0, 0] (ln 2), [1, 1] (ln 2), [0, 9]: the lowest first
    q = 1 / (1 + math.exp(9))
    low = unseen_entropy(logits, unseen, 0.1)
    assert low.item() == pytest.approx(-(q * math.log(q) + (1 - q) * math.log(1 - q)), rel=1e-4)
    all_three = unseen_entropy(logits, unseen, 1.0)
    assert all_three.item() == pytest.approx((2 * 0.693147 + low.item()) / 3, abs=1e-4)


def test_tokens_move_entropy_falls_and_everything_is_restored(tmp_path):
    model = _model(tmp_path)
    model.prompt.requires_grad_(False)  # as after loading the prompt stage's checkpoint
    ttpt = TestTimePromptTuning(steps=6, lr=0.05, select_fraction=0.5)
    pixels = _pixels(model, _image(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with ttpt.applied(model, pixels, NAMES, "semantic") as history:
        moved = model.prompt.class_context.detach().clone()
        assert not torch.equal(moved, before["prompt.class_context"])
        assert torch.equal(model.prompt.task_context, before["prompt.task_context"])
    assert len(history) == 6 and history[-1] < history[0], history
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # tokens back, net still
    assert not any(p.requires_grad for p in model.prompt.parameters())
    # restored also when the tuning fails
    with pytest.raises(RuntimeError, match="boom"):
        with ttpt.applied(model, pixels, NAMES, "semantic"):
            raise RuntimeError("boom")
    assert torch.equal(model.prompt.class_context, before["prompt.class_context"])


def test_nothing_tuned_without_unseen_classes(tmp_path):
    model = _model(tmp_path)
    model.seen_classes = frozenset(NAMES)
    ttpt = TestTimePromptTuning(steps=2, lr=0.05)
    with ttpt.applied(model, _pixels(model, _image(0)), NAMES, "semantic") as history:
        assert history == []


def test_inference_with_tuning_changes_predictions_not_the_model(tmp_path):
    plain = _model(tmp_path)
    tuned = _model(
        tmp_path,
        *TTPT,
        "MODEL.FREESEG.TEST_PROMPT_TUNING.STEPS", "3",
        "MODEL.FREESEG.TEST_PROMPT_TUNING.LR", "0.05",
    )  # fmt: skip
    assert plain.test_prompt_tuning is None and tuned.test_prompt_tuning.steps == 3
    tuned.load_state_dict(plain.state_dict())
    inputs = [{"image": _image(s), "vocabulary": NAMES} for s in (0, 1)]
    with torch.no_grad():
        a = plain(inputs)
        b = tuned(inputs)
        b_again = tuned(inputs)  # each image from the trained prompts: the same again
    for x, y, z in zip(a, b, b_again):
        assert x["sem_seg"].shape == y["sem_seg"].shape == (4, 64, 64)
        assert not torch.allclose(x["sem_seg"], y["sem_seg"])
        torch.testing.assert_close(y["sem_seg"], z["sem_seg"])
    for k, v in plain.state_dict().items():
        assert torch.equal(tuned.state_dict()[k], v), k


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="TEST_PROMPT_TUNING"):
        TestTimePromptTuning(steps=0)
    with pytest.raises(ValueError, match="fraction"):
        TestTimePromptTuning(select_fraction=1.5)


def _tuned(tmp_path):
    return _model(tmp_path, *TTPT, "MODEL.FREESEG.TEST_PROMPT_TUNING.STEPS", "2",
                  "MODEL.FREESEG.TEST_PROMPT_TUNING.LR", "0.05")  # fmt: skip


def test_an_inference_stopped_after_the_tuning_restores_the_prompts(tmp_path, monkeypatch):
    """Ctrl-C or an error after the tuning (out of memory on a large photo) left the tuned
    tokens in the model: every later call, any vocabulary, differed."""
    model = _tuned(tmp_path)
    before = model.prompt.class_context.detach().clone()
    flags = [p.requires_grad for p in model.prompt.parameters()]
    decode = model.decode

    def stopped(*args, **kwargs):  # the first forward after the tuning steps
        if not torch.is_grad_enabled():
            raise KeyboardInterrupt
        return decode(*args, **kwargs)

    monkeypatch.setattr(model, "decode", stopped)
    with pytest.raises(KeyboardInterrupt), torch.no_grad():
        model([{"image": _image(0), "vocabulary": NAMES}])
    assert torch.equal(model.prompt.class_context, before)
    assert [p.requires_grad for p in model.prompt.parameters()] == flags


def test_threads_sharing_a_tuning_model_get_the_serial_results(tmp_path):
    """Tuning edits the shared tokens in place: calls from threads saw each other's tuned
    tokens (and crashed in the prompt cache); one image is tuned at a time."""
    import concurrent.futures

    model = _tuned(tmp_path)
    jobs = [({"image": _image(s % 3), "vocabulary": NAMES[: 2 + s % 3]}) for s in range(8)]

    def run(x):
        with torch.no_grad():
            return model([x])[0]["sem_seg"]

    serial = [run(x) for x in jobs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(run, jobs))
    for a, b in zip(serial, threaded):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_one_unseen_class_is_said_once_and_not_tuned(tmp_path):
    # the entropy of a distribution over one class is 0: the steps moved nothing, at their cost
    import logging

    from ovseg_testing.logs import records

    model = _model(tmp_path)
    model.seen_classes = frozenset(NAMES[:3])
    ttpt = TestTimePromptTuning(steps=2, lr=0.05)
    pixels = _pixels(model, _image(0))
    with records("ovseg", logging.WARNING) as said:
        for _ in range(2):
            with ttpt.applied(model, pixels, NAMES, "semantic") as history:
                assert history == []
    assert [r.getMessage() for r in said] == [
        "Test-time prompt tuning: the vocabulary's one unseen class 'grass' has no entropy over "
        "the unseen classes to lower, so its images are predicted with the trained prompts"
    ]
