"""FSS-1000 (1000 classes, HSNet's 520 / 240 / 240 split): ``fss1000_{train,val,test}``.

HSNet's layout: ``FSS-1000/<class>/<n>.jpg`` with its mask ``<n>.png`` (n = 1..10), the
folder names as in ``ovseg/data/vocabularies/fss1000.json``. See
:mod:`ovseg.data.datasets.fss1000`.
"""

from .common import datasets_root
from .fss1000 import register_fss1000

register_fss1000(datasets_root())
