"""Training samplers beyond detectron2's, chosen by a training dataset's metadata."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Iterator, Optional, Sequence

import numpy as np
from torch.utils.data.sampler import Sampler

from detectron2.utils import comm

__all__ = ["ClassUniformTrainingSampler", "train_sampler_for"]


class ClassUniformTrainingSampler(Sampler):
    """An endless stream of record indices: a class drawn uniformly, then one of its records
    drawn uniformly, as HSNet's COCO-20i training draws episodes (hsnet data/coco.py:32-35,
    84-88), so a frequent class (person: 40k images) is drawn as often as a rare one.
    Each process yields its own share of one shared stream, as detectron2's TrainingSampler.
    """

    def __init__(self, record_classes: Sequence[int], seed: Optional[int] = None):
        """
        Args:
            record_classes: the class of each record ("episode_class"), by record index.
            seed (int, optional): shared by all processes; default a shared random seed.
        """
        if len(record_classes) == 0:
            raise ValueError("ClassUniformTrainingSampler needs at least one record")
        groups = defaultdict(list)
        for i, c in enumerate(record_classes):
            groups[int(c)].append(i)
        self._classes = sorted(groups)
        self._groups = [np.asarray(groups[c]) for c in self._classes]
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world = comm.get_rank(), comm.get_world_size()

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite(), self._rank, None, self._world)

    def _infinite(self) -> Iterator[int]:
        rng = np.random.default_rng(self._seed)
        while True:
            group = self._groups[rng.integers(len(self._groups))]
            yield int(group[rng.integers(len(group))])


def train_sampler_for(metadata, dataset_dicts: Sequence[dict]) -> Optional[Sampler]:
    """The sampler a training dataset asks for through ``train_sampling`` metadata:
    ``"class_uniform"`` -> :class:`ClassUniformTrainingSampler`; absent or ``"records"`` ->
    None (detectron2's default sampler)."""
    rule = metadata.get("train_sampling", "records")
    if rule == "records":
        return None
    if rule == "class_uniform":
        return ClassUniformTrainingSampler([d["episode_class"] for d in dataset_dicts])
    raise ValueError(f"Unknown train_sampling {rule!r} in the metadata of a training dataset")
