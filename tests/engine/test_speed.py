"""MODEL.COMPILE: a compiled training step computes what the eager one does, and the
compiled model's checkpoint keys are the eager model's."""

import itertools
import logging

import pytest
import torch
from ovseg_testing import CONFIGS, cpu_opts
from ovseg_testing.data import two_region_batch
from ovseg_testing.models import tiny_lseg, tiny_lseg_cfg, tiny_zegclip, tiny_zegclip_cfg

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.engine.speed import (
    apply_speed_options,
    compile_loss,
    compile_model,
    loss_compile_wanted,
)
from ovseg.engine.train_loop import OvsegSimpleTrainer
from ovseg.modeling.losses import mask_losses

# inductor's errors when this machine has no working C++ compiler or headers
_NO_TOOLCHAIN = ("InvalidCxxCompiler", "CppCompileError", "C++ compile error", "Python.h")


def _step(model, batch):
    """One training forward and backward: the losses and the student's gradients."""
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _assert_same_step(got, want, loss_tol, grad_tol) -> None:
    """Two :func:`_step` results agree: the same losses and gradients, to (rtol, atol)."""
    (want_losses, want_grads), (got_losses, got_grads) = want, got
    assert want_grads.keys() == got_grads.keys() and want_grads
    for k in want_losses:
        torch.testing.assert_close(
            got_losses[k], want_losses[k], rtol=loss_tol[0], atol=loss_tol[1]
        )
    for k in want_grads:
        torch.testing.assert_close(got_grads[k], want_grads[k], rtol=grad_tol[0], atol=grad_tol[1])


def test_compiled_step_matches_eager_and_keeps_checkpoint_keys(tmp_path):
    # aot_eager traces the same graphs as inductor (forward and backward) without
    # generating code: the wiring, at CPU-test cost
    torch._dynamo.reset()
    eager, compiled = tiny_zegclip(tmp_path, seed=0), tiny_zegclip(tmp_path, seed=0)
    keys = list(eager.state_dict())
    assert {"backbone", "decoder", "loss_fn"} <= set(compile_model(compiled, backend="aot_eager"))
    assert compiled.backbone._compiled_call_impl is not None
    # nn.Module.compile compiles in place: no "_orig_mod." prefix, checkpoints interchange
    assert list(compiled.state_dict()) == keys
    compiled.load_state_dict(eager.state_dict(), strict=True)

    batch = two_region_batch(size=32)
    want_losses, want_grads = _step(eager, batch)
    got_losses, got_grads = _step(compiled, batch)
    assert got_losses.keys() == want_losses.keys() and got_grads.keys() == want_grads.keys()
    assert want_grads, "the step trained nothing"
    for k in want_losses:
        torch.testing.assert_close(got_losses[k], want_losses[k], rtol=1e-4, atol=1e-5)
    for k in want_grads:
        torch.testing.assert_close(got_grads[k], want_grads[k], rtol=1e-3, atol=1e-5)


def test_model_compile_switch_generates_kernels_equal_to_eager(tmp_path):
    """MODEL.COMPILE with inductor, as Trainer.build_model applies it; only the loss runs
    (compilation is lazy: inductor on the whole tiny model takes minutes on 2 CPU cores)."""
    torch._dynamo.reset()
    model = tiny_zegclip(tmp_path, seed=0)
    keys = list(model.state_dict())
    cfg = tiny_zegclip_cfg(tmp_path)
    cfg.MODEL.COMPILE = True
    eager_loss = model.loss_fn
    apply_speed_options(model, cfg)
    assert list(model.state_dict()) == keys
    assert model.loss_fn is not eager_loss and model.backbone._compiled_call_impl is not None
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    target[:, :2] = 255
    kwargs = {"ignore_value": 255, "classes": torch.tensor([True, True, False])}
    want = eager_loss(logits, target, **kwargs)
    want_grad = torch.autograd.grad(want[0] + want[1], logits)[0]
    try:
        got = model.loss_fn(logits, target, **kwargs)
    except Exception as e:
        if not any(k in f"{type(e).__name__} {e}" for k in _NO_TOOLCHAIN):
            raise
        pytest.skip(f"inductor cannot build CPU kernels here: {type(e).__name__}: {e}"[:300])
    got_grad = torch.autograd.grad(got[0] + got[1], logits)[0]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)


def test_lseg_loss_compiled_by_inductor_rounds_the_official_fp16_logits_as_eager(tmp_path):
    """MODEL.COMPILE_LOSS's inductor kernels keep eager's rounding at each cast: LSeg's
    official fp16 logits (the features rounded to fp16, then their scaled product) give the
    eager loss to float32 precision, where inductor alone rounds once (8e-6 apart here), and
    the eager gradients to fp16's."""
    torch._dynamo.reset()
    model = tiny_lseg(tmp_path, seed=0, half_logits=True, spatial_reg="bottleneck")
    assert compile_loss(model, "always", "cpu")
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 32, 8, 8, generator=g, requires_grad=True)
    text = torch.nn.functional.normalize(torch.randn(3, 32, generator=g), dim=1)
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    target[:, :2] = 255
    args = (text, target, (16, 16))
    want = model.group_loss(features, *args)
    want_grad = torch.autograd.grad(want[0], features)[0]
    try:
        got = model.loss_fn(features, *args)
    except Exception as e:
        if not any(k in f"{type(e).__name__} {e}" for k in _NO_TOOLCHAIN):
            raise
        pytest.skip(f"inductor cannot build CPU kernels here: {type(e).__name__}: {e}"[:300])
    got_grad = torch.autograd.grad(got[0], features)[0]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # the backward's float32 sums, reassociated, can flip an fp16 rounding (2^-10 relative)
    torch.testing.assert_close(got_grad, want_grad, rtol=2**-9, atol=1e-7)


def _cuda_tiny_zegclip(cache_dir, graphs: bool):
    """The tiny ZegCLIP on CUDA, seeded; ``graphs``: its networks compiled by torch's
    "cudagraphs" backend (the graph trees of MODEL.COMPILE_MODE reduce-overhead without
    inductor's code generation)."""
    torch._dynamo.reset()
    cfg = tiny_zegclip_cfg(cache_dir)
    cfg.MODEL.DEVICE = "cuda"
    torch.manual_seed(0)
    model = build_model(cfg)
    if graphs:
        compile_model(model, backend="cudagraphs")
    return model


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_training_writes_the_eager_metrics(tmp_path):
    """MODEL.COMPILE_MODE reduce-overhead replays CUDA graphs, each replay writing its outputs
    over the last one's: training through them (torch's "cudagraphs" backend, the same graph
    trees without inductor's code generation) must write the eager run's deferred metrics."""
    histories = {}
    for graphs in (False, True):
        model = _cuda_tiny_zegclip(tmp_path, graphs)
        params = [p for p in model.parameters() if p.requires_grad]
        data = itertools.repeat(two_region_batch(size=32))
        trainer = OvsegSimpleTrainer(
            model, data, torch.optim.SGD(params, lr=0.01), metrics_period=4
        )
        trainer.max_iter = 6
        with EventStorage(0) as storage:
            for i in range(6):
                storage.iter = i
                trainer.run_step()
            histories[graphs] = [v for v, _ in storage.history("total_loss").values()]
    assert len(histories[True]) == 6 and histories[False][-1] < histories[False][0]
    assert histories[True] == pytest.approx(histories[False], rel=1e-3)


def _test_outputs(model, seeds):
    """The model's eval outputs (sem_seg, on the host) for a batch of two 40 x 70 images per
    seed, each batch called in turn and all of them read afterwards."""
    from ovseg_testing.data import random_image

    model.eval()
    outs = []
    with torch.no_grad():
        for seed in seeds:
            torch.manual_seed(seed)
            batch = [{"image": random_image(40, 70), "vocabulary": ["cat", "dog", "sky"]}
                     for _ in range(2)]  # fmt: skip
            outs.append(model(batch))  # held while the next batch runs
    return [o["sem_seg"].float().cpu() for out in outs for o in out]


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_a_compiled_model_tests_as_the_eager_one(tmp_path, mode):
    # MODEL.COMPILE at test time: the compiled backbone and decoder (whole images, and the
    # sliding windows of 32 with stride 24: six per image) give the eager scores
    outs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        model = tiny_zegclip(tmp_path, seed=0)
        model.inference_mode, model.slide_window, model.slide_stride = mode, (32, 32), (24, 24)
        if compiled:
            assert {"backbone", "decoder"} <= set(compile_model(model, backend="aot_eager"))
        outs[compiled] = _test_outputs(model, seeds=(1, 2))
    for got, want in zip(outs[True], outs[False]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_cuda_graph_inference_keeps_each_batchs_scores(tmp_path, mode):
    """A CUDA graph's next replay writes over its last outputs: every batch's returned scores
    (several windows per image in slide mode, batches held while the next one runs) must
    still be the eager model's afterwards."""
    outs = {}
    for graphs in (False, True):
        model = _cuda_tiny_zegclip(tmp_path, graphs)
        model.inference_mode, model.slide_window, model.slide_stride = mode, (32, 32), (24, 24)
        outs[graphs] = _test_outputs(model, seeds=(1, 2, 3))
    for got, want in zip(outs[True], outs[False]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_channels_last_weights_train_as_the_contiguous_ones(tmp_path):
    # MODEL.CHANNELS_LAST (the convolutional students' NHWC layout) changes the memory
    # layout only: the same losses and gradients, on the CPU too
    config = str(CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml")
    opts = cpu_opts("SemanticSegmentor", tmp_path / "cache")
    steps = {}
    for last in (False, True):
        torch.manual_seed(0)
        model = Trainer.build_model(load_config(config, [*opts, "MODEL.CHANNELS_LAST", str(last)]))
        conv = model.backbone.bottom_up.stem.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == last
        g = torch.Generator().manual_seed(1)
        images = torch.randint(0, 256, (2, 3, 64, 64), generator=g).to(torch.uint8)
        labels = torch.randint(0, 150, (2, 64, 64), generator=g)
        batch = [{"image": i, "sem_seg": s} for i, s in zip(images, labels)]
        steps[last] = _step(model, batch)
    _assert_same_step(steps[True], steps[False], (1e-4, 1e-5), (1e-3, 1e-5))


def test_torchs_attention_on_request_trains_as_the_token_major_one(tmp_path):
    # MODEL.CLIP.TOKEN_MAJOR_ATTENTION False (to measure the difference): torch's own
    # nn.MultiheadAttention in the towers, the same losses and gradients
    from torch import nn

    from ovseg.clip.attention import TokenMajorMultiheadAttention

    steps = {}
    for token_major in (True, False):
        torch.manual_seed(0)
        cfg = tiny_zegclip_cfg(tmp_path)
        cfg.MODEL.CLIP.TOKEN_MAJOR_ATTENTION = token_major
        model = Trainer.build_model(cfg)
        kinds = {type(m) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        assert kinds == {TokenMajorMultiheadAttention if token_major else nn.MultiheadAttention}
        with EventStorage(0):
            steps[token_major] = _step(model, two_region_batch(names=("cat", "dog", "grass")))
    _assert_same_step(steps[True], steps[False], (1e-5, 1e-6), (1e-4, 1e-6))


def test_model_compile_says_what_it_compiled_and_when_nothing(tmp_path):
    """MaskCLIP's one network is the frozen teacher, never compiled: MODEL.COMPILE says so
    rather than appearing to take effect."""
    from ovseg_testing.logs import records
    from ovseg_testing.models import tiny_maskclip_cfg

    torch._dynamo.reset()
    cfg = tiny_maskclip_cfg(tmp_path)
    cfg.MODEL.COMPILE = True
    with records("ovseg.engine.speed") as warned:
        apply_speed_options(build_model(cfg), cfg)
    assert len(warned) == 1 and "MaskCLIP has nothing to compile" in warned[0].getMessage()
    cfg = tiny_zegclip_cfg(tmp_path)
    cfg.MODEL.COMPILE = True
    with records("ovseg.engine.speed", logging.INFO) as said:
        apply_speed_options(tiny_zegclip(tmp_path, seed=0), cfg)
    assert [r.getMessage() for r in said] == [
        "MODEL.COMPILE: compiled backbone, decoder, loss_fn of ZegCLIP"
    ]


def test_loss_compile_setting_means_cuda_with_triton_by_default():
    assert loss_compile_wanted("auto", "cuda:1", triton=True)
    assert not loss_compile_wanted("auto", "cuda", triton=False)  # inductor has no GPU codegen
    assert not loss_compile_wanted("auto", "cpu", triton=True)
    assert loss_compile_wanted("always", "cpu") and not loss_compile_wanted("never", "cuda")
    with pytest.raises(ValueError, match="MODEL.COMPILE_LOSS='off'; choose one of"):
        loss_compile_wanted("off", "cuda")


def test_model_compile_loss_compiles_the_loss_alone_and_trains_as_eager(tmp_path):
    """MODEL.COMPILE_LOSS: the loss function compiled, the network eager; "auto" leaves the
    CPU eager; the compiled loss (traced by aot_eager, forward and backward) gives the eager
    step's losses and gradients."""
    from ovseg_testing.logs import records

    torch._dynamo.reset()
    cfg = tiny_zegclip_cfg(tmp_path)
    assert cfg.MODEL.COMPILE_LOSS == "auto" and cfg.MODEL.DEVICE == "cpu"
    eager, compiled = tiny_zegclip(tmp_path, seed=0), tiny_zegclip(tmp_path, seed=0)
    loss_fn = eager.loss_fn
    apply_speed_options(eager, cfg)
    assert eager.loss_fn is loss_fn
    with records("ovseg.engine.speed", logging.INFO) as said:
        assert compile_loss(compiled, "always", "cpu", backend="aot_eager")
    assert compiled.loss_fn is not loss_fn and compiled.backbone._compiled_call_impl is None
    assert "compiled the loss_fn of ZegCLIP" in said[0].getMessage()
    batch = two_region_batch(size=32)
    _assert_same_step(_step(compiled, batch), _step(eager, batch), (1e-5, 1e-6), (1e-4, 1e-6))
    # "always" on a model without a loss function says so
    with records("ovseg.engine.speed") as warned:
        assert not compile_loss(torch.nn.Linear(2, 2), "always", "cpu")
    assert "Linear declares no loss_fn to compile" in warned[0].getMessage()


@pytest.mark.parametrize(
    "lseg, grad_tol",
    [
        ({}, (1e-4, 1e-6)),
        # fp16 logits: the traced graph's decomposed operators round as fp16 does (2^-11)
        (
            {"half_logits": True, "spatial_reg": "bottleneck", "loss_normalization": "images"},
            (1e-3, 1e-5),
        ),
    ],
    ids=["defaults", "official-head"],
)
def test_lseg_compiled_loss_trains_as_eager_on_every_vocabulary_group(tmp_path, lseg, grad_tol):
    """LSeg's loss from the head's output on (normalisation, logits, spatial regulariser,
    upsampling, cross-entropy) is its ``loss_fn``: compiled alone (aot_eager traces forward
    and backward), a batch of two vocabularies of different sizes gives the eager losses and
    gradients."""
    torch._dynamo.reset()
    eager, compiled = tiny_lseg(tmp_path, seed=0, **lseg), tiny_lseg(tmp_path, seed=0, **lseg)
    assert eager.loss_fn == eager.group_loss
    assert compile_loss(compiled, "always", "cpu", backend="aot_eager")
    assert compiled.loss_fn != compiled.group_loss
    batch = two_region_batch(size=32) + two_region_batch(("red", "blue", "green", "sky"), n=1)
    _assert_same_step(_step(compiled, batch), _step(eager, batch), (1e-5, 1e-6), grad_tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_loss_compiled_on_cuda_trains_as_the_eager_one(tmp_path):
    """MODEL.COMPILE_LOSS "auto" on CUDA: inductor's triton kernels for the focal and dice
    losses give the eager losses and gradients."""
    steps = {}
    for setting in ("never", "auto"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        cfg = tiny_zegclip_cfg(tmp_path)
        cfg.MODEL.DEVICE, cfg.MODEL.COMPILE_LOSS = "cuda", setting
        model = Trainer.build_model(cfg)
        assert (model.loss_fn is mask_losses) == (setting == "never")
        with EventStorage(0):
            steps[setting] = _step(model, two_region_batch(size=32))
    _assert_same_step(steps["auto"], steps["never"], (1e-4, 1e-6), (1e-3, 1e-6))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lseg_loss_compiled_on_cuda_trains_as_the_eager_one(tmp_path):
    """LSeg on CUDA, MODEL.COMPILE_LOSS "auto": inductor's kernels for the normalisation,
    logits and cross-entropy give the eager losses and gradients, in fp16 logits too."""
    steps = {}
    for setting in ("never", "auto"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        cfg = tiny_lseg_cfg(tmp_path, half_logits=True)
        cfg.MODEL.DEVICE, cfg.MODEL.COMPILE_LOSS = "cuda", setting
        model = Trainer.build_model(cfg)
        assert (model.loss_fn == model.group_loss) == (setting == "never")
        with EventStorage(0):
            steps[setting] = _step(model, two_region_batch(size=32))
    _assert_same_step(steps["auto"], steps["never"], (1e-3, 1e-5), (1e-2, 1e-5))
