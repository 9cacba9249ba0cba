"""The class-uniform training sampler of COCO-20i: classes drawn equally often whatever
their number of records; a seed repeats the stream."""

import collections
import itertools

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
