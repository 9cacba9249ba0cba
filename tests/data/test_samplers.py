"""The class-uniform training sampler of COCO-20i: classes drawn equally often whatever
their number of records; a seed repeats the stream."""

import collections
import itertools

import pytest
from ovseg_testing.logs import records

from ovseg.data.resumable_loader import ResumableTrainingSampler, _SeededMapDataset
from ovseg.data.samplers import ClassUniformTrainingSampler, train_sampler_for


def test_classes_are_drawn_uniformly_not_by_records():
    classes = [0] * 90 + [1] * 9 + [2]  # 90 / 9 / 1 records
    draws = list(itertools.islice(iter(ClassUniformTrainingSampler(classes, seed=3)), 3000))
    counts = collections.Counter(classes[i] for i in draws)
    assert all(900 < counts[c] < 1100 for c in (0, 1, 2)), counts
    assert len({i for i in draws if classes[i] == 0}) > 80  # records within a class vary
    again = list(itertools.islice(iter(ClassUniformTrainingSampler(classes, seed=3)), 3000))
    assert draws == again


def test_metadata_chooses_the_sampler():
    dicts = [{"episode_class": 4}, {"episode_class": 5}]
    assert train_sampler_for({"train_sampling": "records"}, dicts) is None
    assert isinstance(
        train_sampler_for({"train_sampling": "class_uniform"}, dicts), ClassUniformTrainingSampler
    )


def test_a_sample_the_mapper_skips_is_replaced_by_the_next():
    # a mapper returns None when it cannot use a sample (a random region crop that missed
    # its region): the resumable loader maps the next record instead, and says so
    records_ = [{"k": k} for k in range(4)]
    sampler = ResumableTrainingSampler(4, 1, 0)
    skip_first = _SeededMapDataset(records_, lambda r: None if r["k"] < 2 else r["k"], sampler)
    with records("ovseg.data.resumable_loader") as got:
        assert skip_first[(0, 0)] == 2 and skip_first[(1, 3)] == 3
    assert [r.getMessage() for r in got] == [
        f"the mapper skipped sample {i}; trying the next one" for i in (0, 1)
    ]
    with pytest.raises(RuntimeError, match="returned None for every sample"):
        _SeededMapDataset(records_, lambda r: None, sampler)[(0, 1)]
