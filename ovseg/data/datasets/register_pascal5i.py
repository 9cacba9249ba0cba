"""PASCAL-5i (VOC 2012 + SBD, 4 folds of 5 classes): ``pascal5i_fold{0..3}_{train,test}``.

Images ``VOCdevkit/VOC2012/JPEGImages``, masks ``VOCdevkit/VOC2012/SegmentationClassAug``
(0 background, 1..20 classes, 255 boundary; HSNet reads every mask there, hsnet
data/pascal.py:21-22), fold lists from HSNet converted by
``datasets/prepare_fewshot_splits.py``. Fold k's novel classes are voc20 ids 5k..5k+4; the
test ignores boundary pixels. See :mod:`ovseg.data.datasets.fewshot`.
"""

from .common import datasets_root
from .fewshot import register_fewshot_benchmark

register_fewshot_benchmark(
    "pascal5i", datasets_root(), vocabulary_name="voc20", rule="block", test_ignores_boundary=True
)
