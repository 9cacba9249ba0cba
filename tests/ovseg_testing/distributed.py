"""A gloo process group for a spawned test worker, opened and ended as ovseg's launch does."""

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def gloo_world(rank: int, world_size: int, init_file: str) -> Iterator[None]:
    """Join a gloo group of ``world_size`` processes through ``init_file``; on a clean exit
    wait for every rank (no rank tears its connections down while a peer still talks), then
    end the group through ``compat.end_process_group`` whatever happened.

    A plain ``dist.destroy_process_group`` is not enough: detectron2's ``comm`` caches the
    world group (``_get_global_gloo_group``) once an evaluator gathers through it, and a gloo
    group left to the interpreter's exit can abort the worker after its work is done
    ("terminate called without an active exception", SIGABRT; the CI's flaky
    test_distributed_sums_confusion_matrices)."""
    import torch.distributed as dist

    from ovseg import compat

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        yield
        dist.barrier()
    finally:
        compat.end_process_group()
