"""Run-time adaptations to the installed detectron2, each chosen by a feature test.

ovseg runs on the official detectron2 build and on v0.6's Python sources installed without
compiled ops (``tools/install_detectron2.py``). Source-level fixes live in that install;
this module holds only behaviour that even upstream lacks for CPU runs:

- v0.6's ``launch`` asserts CUDA and always uses NCCL, so multi-process CPU runs (gloo) are
  started here when the installed ``launch`` cannot do it;
- ``create_ddp_model`` passes CUDA ``device_ids`` even for a model on the CPU, so ovseg
  wraps DDP itself with the device of the model's parameters; and torch's ``SyncBatchNorm``
  refuses CPU tensors in multi-process training, so a CPU model's SyncBN layers become
  ``ovseg.utils.cpu_sync_batchnorm.CpuSyncBatchNorm`` (detectron2's ``NaiveSyncBatchNorm``
  computing as SyncBN: gloo all-reduce, float32 statistics) when it is wrapped
  (``cpu_sync_batchnorm``);
- workers outlive a launcher killed by a signal (they are reparented and keep training), so
  every worker asks the kernel for a signal when its launcher dies; and the default
  ``--dist-url`` is a fixed port per user, so two runs at once collide: single-machine runs
  that name no URL pick a free port (``default_dist_url``);
- torch's spawn hands the launcher only the text of a worker's traceback, so the tools'
  one-line reports of a full disk, out of memory or an unreadable file never saw the error:
  ``launch`` raises a worker's error as itself (``ovseg.utils.worker_errors``);
- a worker that returns with its process groups still referenced (by detectron2's ``comm``
  caches, or by a DDP wrapper in a reference cycle) tears gloo down during interpreter
  finalization, which can abort it after its work is done; every launched worker ends its
  groups first (``end_process_group``).

Two private detectron2 functions that ovseg calls changed their arguments after v0.6:
``SimpleTrainer.write_metrics`` takes the iteration (``cur_iter``) and the COCO evaluation
takes the ``COCOeval`` class (``cocoeval_fn``) instead of ``use_fast_impl``
(``write_metrics``, ``evaluate_predictions_on_coco``); ``launch`` resolves ``dist_url``
``"auto"`` only, so ``launch`` here turns a missing URL of a one-machine run into ``"auto"``.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import importlib
import inspect
import logging
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from detectron2.utils import comm

from .utils.worker_errors import is_peer_gone, relayed_errors, relaying

# the module, not the function that detectron2.engine re-exports under the same name
d2_launch_module = importlib.import_module("detectron2.engine.launch")

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)

__all__ = [
    "has_compiled_ops",
    "launch_supports_cpu",
    "launch",
    "create_ddp_model",
    "cpu_sync_batchnorm",
    "default_dist_url",
    "die_with_parent",
    "end_process_group",
    "write_metrics",
    "evaluate_predictions_on_coco",
]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def has_compiled_ops() -> bool:
    """True when detectron2's C++/CUDA ops are importable (an official build).

    False for a missing ``_C`` and for the placeholder written by
    ``tools/install_detectron2.py`` (it carries ``OVSEG_PLACEHOLDER``).
    """
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "OVSEG_PLACEHOLDER", False)


def launch_supports_cpu(launch_module: Any = d2_launch_module) -> bool:
    """True when detectron2's ``launch`` can start gloo workers without CUDA.

    v0.6's worker asserts ``torch.cuda.is_available()`` and hard-codes NCCL; later
    versions pick gloo when no GPU is present. The test reads the worker's source for a
    gloo backend, the only observable difference short of spawning processes.
    """
    worker = getattr(launch_module, "_distributed_worker", None)
    if worker is None:
        return False
    try:
        src = inspect.getsource(worker)
    except (OSError, TypeError):
        return False
    return "gloo" in src.lower()


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Start ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes.

    On GPUs, or when the installed detectron2 supports CPU workers, this is detectron2's
    ``launch``. Without CUDA, ``num_gpus_per_machine`` counts CPU processes, connected
    through gloo.
    """
    world_size = num_machines * num_gpus_per_machine
    if dist_url is None and num_machines == 1:  # later detectron2 would read env:// instead
        dist_url = "auto"
    d2_launches = torch.cuda.is_available() or launch_supports_cpu()
    if world_size <= 1:  # in this process, as detectron2's launch does
        main_func(*args)
        return
    # spawned workers: a worker's error is raised here as itself (not torch's traceback text)
    with relayed_errors() as folder:
        main_func = functools.partial(relaying, folder, main_func)
        if not d2_launches:
            _spawn_cpu_workers(
                main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
            )
            return
        d2_launch_module.launch(
            functools.partial(_run_dying_with, os.getpid(), main_func),  # they end with this one
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )


def _spawn_cpu_workers(
    main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
) -> None:
    """Start this machine's gloo CPU workers of :func:`launch` and wait for them."""
    world_size = num_machines * num_gpus_per_machine
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError(
                f"dist_url={dist_url!r} is only valid on one machine; pass "
                "--dist-url tcp://<host of machine 0>:<port> for multi-machine runs."
            )
        dist_url = f"tcp://127.0.0.1:{d2_launch_module._find_free_port()}"
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            args,
            timeout,
            os.getpid(),
        ),
        daemon=False,
        start_method="spawn",
    )


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_procs_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
    launcher_pid: int,
) -> None:
    die_with_parent(launcher_pid)
    global_rank = machine_rank * num_procs_per_machine + local_rank
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=global_rank,
        timeout=timeout,
    )
    _create_local_process_group(num_procs_per_machine)
    comm.synchronize()
    try:
        main_func(*args)
        # every rank is done before any tears down its gloo connections: a rank that
        # destroys its group while a peer still talks to it can abort that peer at exit
        comm.synchronize()
    except RuntimeError as e:
        if is_peer_gone(e):  # a peer failed first: its error, not this echo, is the one to show
            time.sleep(PEER_FAILURE_GRACE_S)
        raise
    finally:
        end_process_group()


# seconds a rank whose peer closed its connection waits before failing: torch's spawn reports
# the first process to exit with an error, and the rank that failed first (a corrupt image on
# rank 1) should be that one, not a rank that only saw it go (under load, either came first)
PEER_FAILURE_GRACE_S = 5.0


def _run_dying_with(launcher_pid: int, main_func: Callable[..., Any], *args: Any) -> Any:
    die_with_parent(launcher_pid)
    try:
        result = main_func(*args)
        comm.synchronize()  # as in _cpu_worker: no rank ends its group while a peer talks
        return result
    finally:
        end_process_group()


def end_process_group() -> None:
    """Drop every reference that keeps the process groups alive, then destroy them.

    ``dist.destroy_process_group`` drops only the registry's references. detectron2's ``comm``
    keeps the world group in an ``lru_cache`` (``_get_global_gloo_group``) and the
    machine's group in a module global, and a DDP wrapper holds its group and can outlive the
    last name bound to it (the first wrapper of a process sits in a reference cycle through a
    frame of its constructor), until the cyclic collector runs. A gloo group still held at
    the interpreter's exit is torn down while Python finalizes, when its threads can no
    longer take the GIL to free the tensors of their last work: the worker can then abort
    ("terminate called without an active exception", SIGABRT) after its work is done,
    failing the whole launch. Ending the groups here does it while the interpreter is whole.
    A no-op when no group is initialized.
    """
    if hasattr(comm, "_LOCAL_PROCESS_GROUP"):
        comm._LOCAL_PROCESS_GROUP = None
    cache_clear = getattr(getattr(comm, "_get_global_gloo_group", None), "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` (its launcher) is gone, however it died.

    On Linux the kernel sends SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``,
    as torchrun's workers do); elsewhere a daemon thread polls the parent pid every second.
    Either way a worker never trains on, reparented, after its launcher was killed.
    """
    if os.getppid() != parent_pid:  # the launcher died before this line
        os._exit(1)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # it died between the check and the prctl
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    logger.error("launcher (pid %d) is gone: this worker exits", parent_pid)
    os._exit(1)


def default_dist_url(dist_url: str, parser_default: str, num_machines: int) -> str:
    """``"auto"`` (a free port) for a single-machine run left at the parser's fixed default.

    detectron2's ``default_argument_parser`` derives its default port from the user id, so a
    user's second multi-process run fails to bind it; a URL given on the command line, or
    any multi-machine run, keeps what was given.
    """
    if num_machines == 1 and dist_url == parser_default:
        return "auto"
    return dist_url


def _create_local_process_group(num_procs_per_machine: int) -> None:
    """Give ``comm.get_local_rank()`` its group, as detectron2's own launcher does."""
    if hasattr(comm, "create_local_process_group"):  # detectron2 after v0.6
        comm.create_local_process_group(num_procs_per_machine)
        return
    # v0.6 keeps the group in a module global that its launcher fills in the same way.
    num_machines = dist.get_world_size() // num_procs_per_machine
    for i in range(num_machines):
        ranks = list(range(i * num_procs_per_machine, (i + 1) * num_procs_per_machine))
        pg = dist.new_group(ranks)
        if i == dist.get_rank() // num_procs_per_machine:
            comm._LOCAL_PROCESS_GROUP = pg


def create_ddp_model(
    model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs: Any
) -> torch.nn.Module:
    """Wrap ``model`` in DDP when more than one process runs; CPU models get no device ids.

    Args:
        model: the module to wrap.
        fp16_compression: compress gradients to fp16 for all-reduce (GPU runs).
        kwargs: passed to :class:`torch.nn.parallel.DistributedDataParallel`.
    """
    if comm.get_world_size() == 1:
        return model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()] if device.type == "cuda" else None
    if device.type == "cpu":
        cpu_sync_batchnorm(model)
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def cpu_sync_batchnorm(model: torch.nn.Module) -> int:
    """Replace ``model``'s ``nn.SyncBatchNorm`` layers by :class:`CpuSyncBatchNorm` (a
    detectron2 ``NaiveSyncBatchNorm``), in place, keeping their parameter and buffer objects
    (an optimizer built on the model stays valid).

    torch's SyncBatchNorm raises "expected input tensor to be on GPU" in the training forward
    of a multi-process CPU run; this one all-reduces the sums and sums of squares with gloo,
    in float32 (also for a bf16 input under autocast), so it normalises by the statistics of
    all processes' images and updates the running statistics as SyncBN does on GPUs. One
    process, or evaluation: a plain BatchNorm, as SyncBN is there. The state dict keys are
    the same.

    Returns:
        int: the layers replaced.
    """
    from .utils.cpu_sync_batchnorm import CpuSyncBatchNorm

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.SyncBatchNorm:
                continue
            naive = CpuSyncBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                stats_mode="N",
            )
            for key, value in list(child._parameters.items()) + list(child._buffers.items()):
                setattr(naive, key, value)  # the same objects: the optimizer holds them
            naive.train(child.training)
            setattr(parent, name, naive)
            replaced += 1
    if replaced:
        logger.info(
            f"{replaced} SyncBatchNorm layers run as CpuSyncBatchNorm (detectron2's "
            "NaiveSyncBatchNorm computing as SyncBN): torch's "
            "SyncBatchNorm needs CUDA processes"
        )
    return replaced


def _parameters(func: Callable[..., Any]) -> frozenset:
    try:
        return frozenset(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return frozenset()


def write_metrics(loss_dict: dict, data_time: float, prefix: str = "") -> None:
    """detectron2's ``SimpleTrainer.write_metrics`` at the event storage's iteration.

    v0.6's is ``(loss_dict, data_time, prefix="")`` and writes at the storage's iteration; later
    ones are ``(loss_dict, data_time, cur_iter, prefix="")``: called as v0.6's, the prefix
    became the iteration (``""``), and the writers failed comparing it with numbers.
    """
    from detectron2.engine import SimpleTrainer
    from detectron2.utils.events import get_event_storage

    d2_write = SimpleTrainer.write_metrics
    if "cur_iter" in _parameters(d2_write):
        d2_write(loss_dict, data_time, get_event_storage().iter, prefix)
    else:
        d2_write(loss_dict, data_time, prefix)


def evaluate_predictions_on_coco(evaluate: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``evaluate`` (detectron2's ``_evaluate_predictions_on_coco``) with pycocotools' own
    ``COCOeval``: v0.6 takes ``use_fast_impl=False``, later versions ``cocoeval_fn=COCOeval``
    (and reject ``use_fast_impl``)."""
    params = _parameters(evaluate)
    if "cocoeval_fn" in params:
        from pycocotools.cocoeval import COCOeval

        kwargs["cocoeval_fn"] = COCOeval
    elif "use_fast_impl" in params:
        kwargs["use_fast_impl"] = False
    else:
        raise TypeError(
            f"{getattr(evaluate, '__qualname__', evaluate)!r} takes neither cocoeval_fn nor "
            "use_fast_impl: an unknown detectron2 version; ovseg needs pycocotools' COCOeval"
        )
    return evaluate(*args, **kwargs)
