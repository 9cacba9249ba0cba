"""ovseg's Trainer: detectron2's DefaultTrainer with ovseg's mappers, evaluators and solver."""

from __future__ import annotations

import logging
import weakref

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..compat import create_ddp_model
from ..data import build_dataset_mapper
from ..pseudo import pseudo_labelled_dataset_dicts
from . import solver
from .checkpoint import AtomicCheckpointer
from .speed import apply_speed_options
from .train_loop import AMPTrainer, OvsegSimpleTrainer


class Trainer(DefaultTrainer):
    """DefaultTrainer whose DDP wrapping, AMP and checkpoints also work for CPU runs."""

    def __init__(self, cfg: CfgNode) -> None:
        # Same order as DefaultTrainer.__init__; only the DDP wrapper, AMP step and
        # checkpointer differ (v0.6's pass CUDA device ids, assert CUDA, write non-atomically).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = self.build_step(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self._trainer.max_iter = self.max_iter
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @staticmethod
    def build_step(cfg: CfgNode, model, data_loader, optimizer) -> SimpleTrainer:
        """The training step: AMP by SOLVER.AMP, metrics read back every
        SOLVER.METRICS_PERIOD steps."""
        period = cfg.SOLVER.METRICS_PERIOD
        if cfg.SOLVER.AMP.ENABLED:
            return AMPTrainer(
                model, data_loader, optimizer, dtype=cfg.SOLVER.AMP.DTYPE, metrics_period=period
            )
        return OvsegSimpleTrainer(model, data_loader, optimizer, metrics_period=period)

    @classmethod
    def build_model(cls, cfg: CfgNode):
        """detectron2's model, with MODEL.CHANNELS_LAST and MODEL.COMPILE applied."""
        return apply_speed_options(super().build_model(cfg), cfg)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        if not cfg.DATASETS.TRAIN:
            raise ValueError("DATASETS.TRAIN is empty; name a registered training dataset.")
        mapper = build_dataset_mapper(cfg, True, cfg.DATASETS.TRAIN[0])
        # with a pseudo-label store, every training sample also carries "pseudo_sem_seg"
        dataset = pseudo_labelled_dataset_dicts(cfg) if cfg.DATASETS.PSEUDO_LABELS else None
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        mapper = build_dataset_mapper(cfg, False, dataset_name)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        from ..evaluation.build import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model):
        return solver.build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer):
        return solver.build_lr_scheduler(cfg, optimizer)
