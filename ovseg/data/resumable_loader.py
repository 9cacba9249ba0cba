"""A training loader whose position is the iteration: resuming at iteration i gives batch i.

detectron2's ``TrainingSampler`` is an infinite shuffled stream (seeded once), and its loader
gives each worker process every N-th sample with an RNG seeded when the workers start. A
resumed run restarts that stream at its beginning, so it trains on other batches with other
augmentations than the run it continues. Here, per rank:

- batch ``b`` is always positions ``[b*B, (b+1)*B)`` of the same stream as
  ``TrainingSampler`` with the same seed (so a one-process loader gives the very batches
  detectron2's would); worker ``w`` of ``N`` builds batches ``b ≡ start + w (mod N)``, and the
  ``DataLoader`` takes them round-robin, so batch ``start + k`` is the k-th it yields;
- in a worker, each sample's augmentation draws from RNGs seeded with (seed, rank, position);
  without workers the mapper draws from the process's RNGs, which checkpoints save;
- ``set_start(b, seed)`` (before the loader is iterated) resumes at batch ``b``.

Only ``TrainingSampler`` runs without aspect-ratio grouping (ovseg's default) take this path;
other settings keep detectron2's loader (and an approximate resume).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Iterator, Optional, Tuple

import torch.utils.data as torchdata

from detectron2.config import CfgNode
from detectron2.data import DatasetFromList, build_detection_train_loader
from detectron2.data.build import _train_loader_from_config, build_batch_data_loader
from detectron2.data.common import ToIterableDataset
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

__all__ = ["ResumableTrainingSampler", "build_resumable_train_loader", "resumable_sampler_of"]

logger = logging.getLogger(__name__)


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler``'s stream, yielding ``(position, index)`` from batch ``start``.

    Args:
        size (int): the dataset's length.
        batch_size (int): samples per batch on this rank.
        seed (int): the stream's seed (the same on every rank).
    """

    def __init__(self, size: int, batch_size: int, seed: int):
        super().__init__(size, shuffle=True, seed=seed)
        self.batch_size = int(batch_size)
        self.start = 0

    @property
    def seed(self) -> int:
        return self._seed

    def set_start(self, batch: int, seed: Optional[int] = None) -> None:
        """Begin at batch ``batch`` (the iteration to run next) of the stream of ``seed``."""
        if batch < 0:
            raise ValueError(f"start batch must be >= 0, got {batch}")
        self.start = int(batch)
        if seed is not None:
            self._seed = int(seed)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        info = torchdata.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        stream = itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)
        first = self.start * self.batch_size
        for position, index in enumerate(itertools.islice(stream, first, None), start=first):
            if (position // self.batch_size - self.start) % num_workers == worker:
                yield position, index


class _SeededMapDataset(torchdata.Dataset):
    """Maps ``(position, index)`` keys; in a loader worker, seeds the RNGs per position."""

    def __init__(self, dataset, mapper: Callable[[dict], Any], sampler: ResumableTrainingSampler):
        self._dataset = dataset
        self._mapper = mapper
        self._sampler = sampler  # its seed, as the workers received it
        self._rank = comm.get_rank()

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, key: Tuple[int, int]):
        position, index = key
        if torchdata.get_worker_info() is not None:
            seed_all_rng((self._sampler.seed * 1_000_003 + position * 131 + self._rank) % 2**31)
        for attempt in range(len(self._dataset)):
            data = self._mapper(self._dataset[(index + attempt) % len(self._dataset)])
            if data is not None:
                return data
            logger.warning("the mapper skipped sample %d; trying the next one", index + attempt)
        raise RuntimeError("the training mapper returned None for every sample")


def build_resumable_train_loader(
    cfg: CfgNode,
    mapper,
    dataset: Optional[list] = None,
    sampler: Optional[torchdata.Sampler] = None,
):
    """detectron2's training loader, resumable at any iteration (see the module docstring).

    Args:
        cfg (CfgNode): the run's config (DATASETS.TRAIN, SOLVER.IMS_PER_BATCH, DATALOADER.*).
        mapper: the training mapper.
        dataset (list[dict] or None): dataset dicts; default those of DATASETS.TRAIN.
        sampler (Sampler or None): a dataset's own sampling (COCO-20i: class first, then a
            record); resumed approximately, as any sampler but detectron2's TrainingSampler.
    """
    kwargs = _train_loader_from_config(cfg, mapper, dataset=dataset)
    if sampler is not None:
        kwargs["sampler"] = sampler
    sampler = kwargs["sampler"]
    if type(sampler) is not TrainingSampler or kwargs["aspect_ratio_grouping"]:
        logger.warning(
            "%s with aspect-ratio grouping %s: a resumed run continues from another data "
            "position than the interrupted one",
            type(sampler).__name__,
            kwargs["aspect_ratio_grouping"],
        )
        return build_detection_train_loader(**kwargs)
    total = kwargs["total_batch_size"]
    world = comm.get_world_size()
    if total <= 0 or total % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {total} must be a positive multiple of {world}")
    dicts = kwargs["dataset"]
    resumable = ResumableTrainingSampler(len(dicts), total // world, sampler._seed)
    mapped = _SeededMapDataset(DatasetFromList(dicts, copy=False), mapper, resumable)
    return build_batch_data_loader(
        ToIterableDataset(mapped, resumable, shard_sampler=False),
        None,
        total,
        aspect_ratio_grouping=False,
        num_workers=kwargs["num_workers"],
    )


def resumable_sampler_of(data_loader) -> Optional[ResumableTrainingSampler]:
    """The loader's :class:`ResumableTrainingSampler`, or None for another loader."""
    sampler = getattr(getattr(data_loader, "dataset", None), "sampler", None)
    return sampler if isinstance(sampler, ResumableTrainingSampler) else None
