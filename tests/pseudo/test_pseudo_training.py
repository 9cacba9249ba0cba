"""The trainer's loader attaches pseudo-labels when DATASETS.PSEUDO_LABELS names a store."""

import inspect

import numpy as np
import pytest
from ovseg_testing import ADE, CONFIGS, make_store

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from ovseg import add_ovseg_config
from ovseg.engine import Trainer

WIRED = "pseudo_labelled_dataset_dicts" in inspect.getsource(Trainer.build_train_loader)


@pytest.mark.skipif(
    not WIRED,
    reason="ovseg/engine/trainer.py build_train_loader does not call "
    "ovseg.pseudo.pseudo_labelled_dataset_dicts yet (the lead's one-line change)",
)
def test_train_loader_batches_carry_pseudo_labels(ade20k_registered, tmp_path):
    store = make_store(tmp_path / "store", ADE.names, dataset="ade20k_sem_seg_train")
    for d in DatasetCatalog.get("ade20k_sem_seg_train"):
        store.write(d["image_id"], np.full((64, 64), 3), np.ones((64, 64)))

    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "ade20k" / "Base-ADE20K-150.yaml"))
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
