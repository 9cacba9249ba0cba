"""The trainer's loader attaches pseudo-labels when DATASETS.PSEUDO_LABELS names a store."""

import inspect

import numpy as np
import pytest
from ovseg_testing import ROOT

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from ovseg import add_ovseg_config
from ovseg.data.datasets.common import datasets_root
from ovseg.data.datasets.register_ade20k import register_all_ade20k
from ovseg.engine import Trainer
from ovseg.pseudo import PseudoLabelStore
from ovseg.vocab import Vocabulary

WIRED = "pseudo_labelled_dataset_dicts" in inspect.getsource(Trainer.build_train_loader)


@pytest.mark.skipif(
    not WIRED,
    reason="ovseg/engine/trainer.py build_train_loader does not call "
    "ovseg.pseudo.pseudo_labelled_dataset_dicts yet (the lead's one-line change)",
)
def test_train_loader_batches_carry_pseudo_labels(ade20k_root, tmp_path, request):
    register_all_ade20k(str(ade20k_root))
    request.addfinalizer(lambda: register_all_ade20k(datasets_root()))
    store = PseudoLabelStore.create(
        str(tmp_path / "store"),
        {
            "fingerprint": "test",
            "vocabulary": list(Vocabulary.builtin("ade150").names),
            "threshold": 0.0,
            "dataset": "ade20k_sem_seg_train",
        },
    )
    for d in DatasetCatalog.get("ade20k_sem_seg_train"):
        store.write(d["image_id"], np.full((64, 64), 3), np.ones((64, 64)))

    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / "ade20k" / "Base-ADE20K-150.yaml"))
    cfg.merge_from_list(
        ["DATASETS.PSEUDO_LABELS", str(store.root), "SOLVER.IMS_PER_BATCH", "2"]
        + ["DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(64,)"]
        + ["INPUT.MAX_SIZE_TRAIN", "64", "INPUT.CROP.SIZE", "(32, 32)"]
        + ["INPUT.SIZE_DIVISIBILITY", "-1"]
    )
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert len(batch) == 2
    for sample in batch:
        assert sample["pseudo_sem_seg"].shape == sample["sem_seg"].shape == (32, 32)
        assert (sample["pseudo_sem_seg"] == 3).all()

    cfg.DATASETS.PSEUDO_LABELS = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a pseudo-label store"):
        Trainer.build_train_loader(cfg)
