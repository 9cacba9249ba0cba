"""COCO-20i (COCO 2014, 4 folds of 20 classes): ``coco20i_fold{0..3}_{train,test}``.

HSNet's layout under ``COCO2014/``: images ``{train,val}2014/*.jpg``, masks
``annotations/{train,val}2014/*.png`` (0 background, class id + 1 for the 80 COCO classes in
category order; HSNet's download, hsnet README), fold lists from HSNet converted by
``datasets/prepare_fewshot_splits.py``. Fold k's novel classes are coco80 ids k, k+4, ..., k+76;
the 1000 test episodes are drawn with seed 0. See :mod:`ovseg.data.datasets.fewshot`.
"""

from .common import datasets_root
from .fewshot import register_fewshot_benchmark

register_fewshot_benchmark(
    "coco20i",
    datasets_root(),
    vocabulary_name="coco80",
    rule="interleaved",
    test_ignores_boundary=False,
)
