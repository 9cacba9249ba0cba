"""ovseg.compat: feature tests against detectron2 with and without compiled ops."""

import sys
import types

import pytest
import torch

import detectron2

from ovseg import compat


def _set_c(monkeypatch, module):
    monkeypatch.setitem(sys.modules, "detectron2._C", module)
    if module is None:
        monkeypatch.delattr(detectron2, "_C", raising=False)
    else:
        monkeypatch.setattr(detectron2, "_C", module, raising=False)


def test_compiled_ops_detected(monkeypatch):
    real = types.ModuleType("detectron2._C")
    real.nms_rotated = lambda *a: None
    _set_c(monkeypatch, real)
    assert compat.has_compiled_ops() is True


def test_placeholder_detected(monkeypatch):
    placeholder = types.ModuleType("detectron2._C")
    placeholder.OVSEG_PLACEHOLDER = True
    _set_c(monkeypatch, placeholder)
    assert compat.has_compiled_ops() is False


def test_missing_c_detected(monkeypatch):
    _set_c(monkeypatch, None)  # a None entry makes the import raise ImportError
    assert compat.has_compiled_ops() is False


def _module_from_source(name, src, tmp_path):
    import importlib.util

    path = tmp_path / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_launch_feature_test(tmp_path):
    v06 = _module_from_source(
        "launch_v06",
        "def _distributed_worker(local_rank):\n"
        "    assert torch.cuda.is_available()\n"
        "    backend = 'NCCL'\n",
        tmp_path,
    )
    later = _module_from_source(
        "launch_later",
        "def _distributed_worker(local_rank):\n"
        "    has_gpu = torch.cuda.is_available()\n"
        "    backend = 'NCCL' if has_gpu else 'GLOO'\n",
        tmp_path,
    )
    assert compat.launch_supports_cpu(v06) is False
    assert compat.launch_supports_cpu(later) is True
    assert compat.launch_supports_cpu(types.ModuleType("empty")) is False


def test_ddp_not_wrapped_in_one_process():
    model = torch.nn.Linear(2, 2)
    assert compat.create_ddp_model(model) is model


def _record_rank(out_dir):
    import torch.distributed as dist

    from detectron2.utils import comm

    t = torch.tensor([comm.get_rank() + 1.0])
    dist.all_reduce(t)
    model = compat.create_ddp_model(torch.nn.Linear(2, 2))
    kind = type(model).__name__
    with open(f"{out_dir}/rank{comm.get_rank()}", "w") as f:
        f.write(f"{comm.get_world_size()} {comm.get_local_rank()} {t.item()} {kind}")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_cpu_launch_two_processes(tmp_path):
    compat.launch(_record_rank, 2, args=(str(tmp_path),))
    got = sorted(p.read_text() for p in tmp_path.iterdir())
    assert got == [
        "2 0 3.0 DistributedDataParallel",
        "2 1 3.0 DistributedDataParallel",
    ]


def _trained_ddp_in_a_cycle():
    import weakref

    model = torch.nn.Linear(3, 2)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ddp(torch.randn(4, 3)).sum().backward()  # the reducer has run gloo work
    # a cycle reaches the wrapper, as one does the first DDP of a process (its __init__ frame
    # stays referenced) or a wrapper held by a trainer that its hooks refer back to
    holder = {"model": ddp}
    holder["self"] = holder
    return weakref.ref(ddp)


def test_end_process_group_frees_every_holder_of_the_groups(tmp_path, monkeypatch):
    # destroy_process_group drops the registry's references only: detectron2's comm caches,
    # and a DDP wrapper in a reference cycle, would keep gloo groups alive until the
    # interpreter finalizes, where tearing them down can abort the worker
    import gc
    import weakref

    import torch.distributed as dist

    from detectron2.utils import comm

    monkeypatch.setattr(comm, "_LOCAL_PROCESS_GROUP", None)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    gc.disable()  # no collection but the one under test
    try:
        compat._create_local_process_group(1)  # as a launched worker has it
        groups = [
            weakref.ref(comm._get_global_gloo_group()),
            weakref.ref(comm._LOCAL_PROCESS_GROUP),
        ]
        ddp = _trained_ddp_in_a_cycle()
        dist.destroy_process_group()
        # what a plain destroy_process_group leaves behind
        assert ddp() is not None and all(g() is not None for g in groups)
        dist.init_process_group(
            "gloo", init_method=f"file://{tmp_path}/again", rank=0, world_size=1
        )
        compat.end_process_group()
        assert ddp() is None and all(g() is None for g in groups)
        assert not dist.is_initialized() and comm._LOCAL_PROCESS_GROUP is None
        compat.end_process_group()  # nothing left: a no-op
    finally:
        gc.enable()
        comm._get_global_gloo_group.cache_clear()  # no stale group for this process's next test
        if dist.is_initialized():
            dist.destroy_process_group()


def test_workers_of_detectron2s_launch_end_their_groups_too(tmp_path, monkeypatch):
    # on GPUs and later detectron2, workers run main_func through _run_dying_with: it returns
    # main_func's result and ends the groups as ovseg's own gloo worker does
    import torch.distributed as dist

    from detectron2.utils import comm

    monkeypatch.setattr(compat, "die_with_parent", lambda pid: None)  # no launcher here
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        assert compat._run_dying_with(0, lambda x: comm.gather(x), 7) == [7]  # fills comm's cache
        assert not dist.is_initialized()
        assert comm._get_global_gloo_group.cache_info().currsize == 0
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/b", rank=0, world_size=1)
        with pytest.raises(ZeroDivisionError):
            compat._run_dying_with(0, lambda: 1 / 0)
        assert not dist.is_initialized()  # a failing worker ends its groups as well
    finally:
        comm._get_global_gloo_group.cache_clear()
        if dist.is_initialized():
            dist.destroy_process_group()


def test_launch_without_a_url_picks_a_free_port_on_detectron2s_launch_too(monkeypatch):
    """detectron2 after v0.6 starts CPU workers itself but resolves only "auto": a missing URL
    reached ``init_process_group`` as env:// and failed (MASTER_ADDR not set)."""
    calls = []
    monkeypatch.setattr(compat, "launch_supports_cpu", lambda: True)
    monkeypatch.setattr(compat.d2_launch_module, "launch", lambda *a, **k: calls.append(k))
    compat.launch(print, 2)
    assert [c["dist_url"] for c in calls] == ["auto"]
    compat.launch(print, 2, num_machines=3)  # several machines: env:// is the user's choice
    assert calls[-1]["dist_url"] is None


def _write_metrics_v06(loss_dict, data_time, prefix=""):
    from detectron2.utils.events import get_event_storage

    _WRITTEN.append((get_event_storage().iter, prefix, sorted(loss_dict)))


def _write_metrics_later(loss_dict, data_time, cur_iter, prefix=""):
    _WRITTEN.append((cur_iter, prefix, sorted(loss_dict)))


_WRITTEN: list = []


@pytest.mark.parametrize("d2_write", [_write_metrics_v06, _write_metrics_later])
@pytest.mark.parametrize("period", [1, 2])
def test_losses_are_written_at_their_iteration_by_either_write_metrics(
    monkeypatch, d2_write, period
):
    """``SimpleTrainer.write_metrics`` takes the iteration after v0.6; called as v0.6's, the
    prefix "" was every loss's iteration and the writers failed on it."""
    from detectron2.engine import SimpleTrainer
    from detectron2.utils.events import EventStorage

    from ovseg.engine.train_loop import DeferredMetrics

    monkeypatch.setattr(SimpleTrainer, "write_metrics", staticmethod(d2_write))
    _WRITTEN.clear()
    steps = DeferredMetrics()
    steps.metrics_period = period
    with EventStorage(5) as storage:
        for it in (5, 6):
            storage.iter = it
            steps._write_metrics({"loss_a": torch.tensor(1.0)}, 0.1)
        steps.flush_metrics()  # period 2: iteration 6 waits for its read-back
    assert _WRITTEN == [(5, "", ["loss_a"]), (6, "", ["loss_a"])]


def test_coco_evaluation_asks_for_pycocotools_in_either_signature(monkeypatch):
    """detectron2 after v0.6 takes ``cocoeval_fn`` and refuses ``use_fast_impl``."""
    from pycocotools.cocoeval import COCOeval

    from ovseg.evaluation import instance_evaluator

    def v06(coco_gt, coco_results, iou_type, kpt_oks_sigmas=None, use_fast_impl=True, **kw):
        return ("v06", use_fast_impl, kw)

    def later(coco_gt, coco_results, iou_type, kpt_oks_sigmas=None, cocoeval_fn=None, **kw):
        return ("later", cocoeval_fn, kw)

    kw = {"img_ids": [3], "max_dets_per_image": None}
    assert compat.evaluate_predictions_on_coco(v06, "gt", [1], "segm", **kw) == ("v06", False, kw)
    got = compat.evaluate_predictions_on_coco(later, "gt", [1], "segm", **kw)
    assert got == ("later", COCOeval, kw)
    with pytest.raises(TypeError, match="neither"):
        compat.evaluate_predictions_on_coco(lambda *a, **k: None, "gt", [1], "segm")
    # the evaluator goes through it (the real function is run by the evaluator's own tests)
    monkeypatch.setattr(instance_evaluator, "_evaluate_predictions_on_coco", later)
    evaluator = types.SimpleNamespace(_coco_api="gt", _max_dets_per_image=7)
    got = instance_evaluator.OpenVocabInstanceEvaluator._evaluate_all(evaluator, [1], [3])
    assert got == ("later", COCOeval, {"img_ids": [3], "max_dets_per_image": 7})


def _sync_bn_step(out_dir, full_batch):
    import torch.distributed as dist

    from detectron2.utils import comm

    rank = comm.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.SyncBatchNorm(3))
    ddp = compat.create_ddp_model(model, broadcast_buffers=False)
    half = full_batch[2 * rank : 2 * rank + 2]  # 2 images each, of the 4
    out = ddp(half)
    (out * out).mean().backward()  # DDP averages: the full batch's mean over 2 halves
    grad = model[0].weight.grad.clone()
    dist.all_reduce(out.new_zeros(1))
    torch.save(
        {"out": out.detach(), "mean": model[1].running_mean, "grad": grad, "kind": type(model[1])},
        f"{out_dir}/rank{rank}.pt",
    )


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_sync_batchnorm_trains_in_cpu_processes_as_one_batch(tmp_path):
    # torch's SyncBatchNorm raises "expected input tensor to be on GPU" in a multi-process
    # CPU forward; wrapped for DDP it normalises by all processes' images as on GPUs
    from ovseg.utils.cpu_sync_batchnorm import CpuSyncBatchNorm

    full = torch.randn(4, 2, 5, 6)
    compat.launch(_sync_bn_step, 2, args=(str(tmp_path), full))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    out = model(full)
    (out * out).mean().backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["kind"] is CpuSyncBatchNorm for r in ranks)
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out.detach())
    for r in ranks:
        torch.testing.assert_close(r["mean"], model[1].running_mean)
        torch.testing.assert_close(r["grad"], model[0].weight.grad)


def test_cpu_sync_batchnorm_keeps_the_optimizers_tensors():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.SyncBatchNorm(3)).eval()
    model[1].running_mean += 2.0
    params = {id(p) for p in model.parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert compat.cpu_sync_batchnorm(model) == 1
    assert {id(p) for p in model.parameters()} == params
    assert not model[1].training
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value)


def _sync_bn_bf16_step(out_dir, full_batch):
    from detectron2.utils import comm

    rank = comm.get_rank()
    bns = torch.nn.ModuleList([torch.nn.SyncBatchNorm(3), torch.nn.SyncBatchNorm(3, momentum=None)])
    ddp = compat.create_ddp_model(bns, broadcast_buffers=False)
    half = full_batch[2 * rank : 2 * rank + 2].bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [bn(half) for bn in ddp.module]
    got = {"out": [o.detach() for o in outs], "state": [bn.state_dict() for bn in bns]}
    torch.save(got, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) path")
def test_cpu_sync_batchnorm_of_bf16_inputs_computes_as_one_float32_batchnorm(tmp_path):
    # CPU autocast feeds bf16 activations: detectron2's NaiveSyncBatchNorm computed E[x^2] -
    # E[x]^2 in bf16 (outputs off by ~790 for a channel of mean 30), returned float32, kept
    # the biased running variance, never counted batches and failed with momentum None
    full = torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    full = full + torch.tensor([30.0, -3.0, 0.0]).reshape(1, 3, 1, 1)
    compat.launch(_sync_bn_bf16_step, 2, args=(str(tmp_path), full))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for i, momentum in enumerate((0.1, None)):
        ref = torch.nn.BatchNorm2d(3, momentum=momentum)
        expected = ref(full.bfloat16().float())
        out = torch.cat([r["out"][i] for r in ranks])
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), expected.detach(), rtol=0, atol=0.04)
        for r in ranks:
            for key, value in ref.state_dict().items():
                torch.testing.assert_close(r["state"][i][key], value, msg=key)
