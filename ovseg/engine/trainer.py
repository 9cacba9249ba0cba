"""ovseg's Trainer: detectron2's DefaultTrainer with ovseg's mappers, evaluators and solver."""

from __future__ import annotations

import logging
import os
import weakref

import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, HookBase, SimpleTrainer, TrainerBase
from detectron2.engine import hooks as d2_hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..compat import create_ddp_model
from ..data import build_dataset_mapper
from ..data.bad_files import naming_data_files
from ..data.image_io import DataFileError, original_message
from ..data.region_sampling import region_dataset_for
from ..data.resumable_loader import build_resumable_train_loader
from ..data.samplers import train_sampler_for
from ..pseudo import pseudo_labelled_dataset_dicts
from ..utils.io import DiskFullError, as_disk_full
from ..utils.resources import (
    is_out_of_memory,
    names_a_dead_worker,
    naming_resources,
    worker_death,
)
from ..utils.worker_errors import quiet_peer_failures
from . import solver
from .checkpoint import AtomicCheckpointer
from .loader_watch import LoaderWatch
from .metric_hooks import keep_evaluations_across_kills
from .resume import (
    DataPosition,
    check_resumed_optimizer,
    remove_stale_temporaries,
    restore_training_position,
    resumed_solver_warning,
    rng_state,
    set_rng_state,
    solver_state,
)
from .signal_watch import ZeroLossWatch
from .speed import apply_speed_options
from .train_loop import AMPTrainer, OvsegSimpleTrainer

logger = logging.getLogger(__name__)


class _KnownErrorsInOneLine(logging.Filter):
    """detectron2 logs an error that ends training with its traceback; a full disk's says
    all in its message (the file, the space needed and free, the checkpoint kept), as does a
    dataset file's that cannot be used (a loader worker's is its whole traceback, which the
    record reduces to the error's own line), and a killed DataLoader worker's traceback shows
    only where the main process happened to be: those are one line. A failed allocation
    keeps its traceback (where memory ran out, in log.txt too), its message followed by the
    settings :meth:`Trainer.train` names."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        known = isinstance(error, (DiskFullError, DataFileError)) or names_a_dead_worker(error)
        if known:
            record.msg, record.args = f"{record.getMessage()} {original_message(error)}", ()
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("detectron2.engine.train_loop").addFilter(_KnownErrorsInOneLine())


def ddp_options(model) -> dict:
    """DDP keyword arguments a model asks for: ``find_unused_parameters`` when some of its
    parameters may get no gradient in a step (``ddp_find_unused_parameters``: XPM's student,
    whose pseudo pass skips a rank without pseudo instances and whose noise head freezes)."""
    return {"find_unused_parameters": bool(getattr(model, "ddp_find_unused_parameters", False))}


def sync_norm_statistics(model: nn.Module) -> None:
    """Give every process rank 0's BatchNorm running statistics (nothing in one process).

    The trainer wraps DDP with ``broadcast_buffers=False`` (as detectron2's DefaultTrainer), so
    a plain BatchNorm ("BN": the LSeg variants' DPT fusion units, the toy MaskCLIP+ and XPM
    teacher ResNets) keeps each rank's own running statistics while checkpoints hold rank
    0's. An evaluation during training, where each rank scores its share of the test set, ran
    rank 1's images through other statistics than the saved model's: its numbers differed
    from ``--eval-only`` of that checkpoint. Training steps use batch statistics, so they are
    unchanged; SyncBN's statistics are equal on every rank already (broadcast all the same).
    """
    if comm.get_world_size() == 1:
        return
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            for buf in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buf is not None:
                    dist.broadcast(buf, src=0)


class _BeforeSave(HookBase):
    """In every process, when PeriodicCheckpointer saves after this step: read back the
    losses still pending (SOLVER.METRICS_PERIOD), so a non-finite one stops the run before
    its weights are saved, and in a multi-process run gather every rank's RNG states for the
    main process's checkpoint (collectives; the checkpointer runs in the main process only).
    """

    def __init__(self, period: int, gather_rng: bool):
        self._period, self._gather_rng = period, gather_rng

    def after_step(self) -> None:
        it, max_iter = self.trainer.iter, self.trainer.max_iter
        if not ((it + 1) % self._period == 0 or it >= max_iter - 1):
            return
        flush = getattr(self.trainer._trainer, "flush_metrics", None)
        if flush is not None:
            try:
                flush()
            except FloatingPointError as e:
                kept = self.trainer.checkpointer.kept_checkpoint()
                raise FloatingPointError(
                    f"{e}\nNo checkpoint is saved from these weights: {kept} (a lower "
                    "SOLVER.BASE_LR or SOLVER.CLIP_GRADIENTS may train past the step)"
                ) from None
        if self._gather_rng:
            self.trainer.checkpointer.gathered_rng = (it, comm.all_gather(rng_state()))


def per_forward_batch(cfg: CfgNode) -> CfgNode:
    """``cfg`` with SOLVER.IMS_PER_BATCH the images of one forward: the step's divided by
    SOLVER.ACCUMULATE_STEPS (the loader's batch)."""
    steps, total = cfg.SOLVER.ACCUMULATE_STEPS, cfg.SOLVER.IMS_PER_BATCH
    if steps == 1:
        return cfg
    world = comm.get_world_size()
    if steps < 1 or total % (steps * world):
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {total} must be a multiple of SOLVER.ACCUMULATE_STEPS {steps} "
            f"x {world} processes: each forward takes IMS_PER_BATCH / ACCUMULATE_STEPS images"
        )
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.IMS_PER_BATCH = total // steps
    return cfg


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
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_options(model))
        self._trainer = self.build_step(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        if comm.is_main_process():  # what a save killed midway left behind
            remove_stale_temporaries(cfg.OUTPUT_DIR)
        # the data stream's seed and every rank's RNG states go into checkpoints: a resumed
        # run trains on exactly the batches the interrupted one would have
        self._data_position = DataPosition(data_loader)
        self.checkpointer = AtomicCheckpointer(
            model, cfg.OUTPUT_DIR, cfg=cfg, trainer=weakref.proxy(self), data=self._data_position
        )
        self.checkpointer.save_rng = True
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self._trainer.max_iter = self.max_iter
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @staticmethod
    def build_step(cfg: CfgNode, model, data_loader, optimizer) -> SimpleTrainer:
        """The training step: AMP by SOLVER.AMP, metrics read back every
        SOLVER.METRICS_PERIOD steps, SOLVER.ACCUMULATE_STEPS loader batches per step."""
        kwargs = {
            "metrics_period": cfg.SOLVER.METRICS_PERIOD,
            "accumulate_steps": cfg.SOLVER.ACCUMULATE_STEPS,
        }
        if cfg.SOLVER.AMP.ENABLED:
            return AMPTrainer(model, data_loader, optimizer, dtype=cfg.SOLVER.AMP.DTYPE, **kwargs)
        return OvsegSimpleTrainer(model, data_loader, optimizer, **kwargs)

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
        # a dataset may ask for its own sampling (COCO-20i: class first, then a record)
        # FreeSeg's prompt stage: N region records per class and task, when asked
        dataset = dataset or region_dataset_for(cfg)
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        sampler = None
        if meta.get("train_sampling", "records") != "records":
            dataset = dataset or DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
            sampler = train_sampler_for(meta, dataset)
        return build_resumable_train_loader(
            per_forward_batch(cfg), mapper, dataset, sampler=sampler
        )

    def build_hooks(self) -> list:
        """DefaultTrainer's hooks; a periodic evaluation a kill cut short is done again on
        resume (:mod:`ovseg.engine.metric_hooks`); the pending losses read back before each
        save (a non-finite one stops the run first) and every rank's RNG states gathered for the
        checkpoints of a multi-process run; a warning when the losses stay exactly 0
        (:mod:`ovseg.engine.signal_watch`: a quarter of the run, at most 100 steps) and when
        the steps wait for their data (:mod:`ovseg.engine.loader_watch`)."""
        hooks = [h for h in super().build_hooks() if h is not None]
        hooks.append(ZeroLossWatch(min(100, max(5, self.cfg.SOLVER.MAX_ITER // 4))))
        if comm.is_main_process():  # one warning, with the main process's figures
            hooks.append(LoaderWatch(100, workers=self.cfg.DATALOADER.NUM_WORKERS))
        # right before the main process's checkpointer (the other ranks have none: before
        # the hooks that follow it), so the states are those the checkpointer would see
        later = (d2_hooks.PeriodicCheckpointer, d2_hooks.EvalHook, d2_hooks.PeriodicWriter)
        at = next((i for i, h in enumerate(hooks) if isinstance(h, later)), len(hooks))
        gather = comm.get_world_size() > 1
        hooks.insert(at, _BeforeSave(self.cfg.SOLVER.CHECKPOINT_PERIOD, gather_rng=gather))
        return keep_evaluations_across_kills(hooks, self.cfg.OUTPUT_DIR)

    def resume_or_load(self, resume: bool = True) -> None:
        """As DefaultTrainer's; a resumed run also continues the data stream and RNG states,
        refuses another optimizer's state and says what of the config it does not follow
        (SOLVER values its saved optimizer and schedule override, a MAX_ITER already passed)."""
        if resume and self.checkpointer.has_checkpoint():
            # torch would fail at the first step, or inside its load_state_dict
            check_resumed_optimizer(self.cfg, self._trainer.optimizer)
        fresh = solver_state(self._trainer.optimizer, self.scheduler)
        extra = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1  # the checkpoint holds the finished iteration
            self._say_what_resumes(fresh, extra)
            restore_training_position(self, extra, self._data_position)
            # with CHECKPOINT_PERIOD dividing MAX_ITER the last iteration is saved twice,
            # model_<MAX_ITER - 1> then model_final; a run killed between the two (or whose
            # model_final the resume refused as damaged) resumes with nothing left to train,
            # and nothing else would write model_final
            final = os.path.join(self.checkpointer.save_dir, "model_final.pth")
            missing = not os.path.isfile(final) or self.checkpointer.refused(final)
            if self.start_iter >= self.max_iter and missing:
                # the RNG states of every rank, as the interrupted run's model_final holds: the
                # states just restored are those of model_<MAX_ITER - 1>, saved at the same step
                states = extra.get("rng_states")
                if states is not None:
                    self.checkpointer.gathered_rng = (self.iter, states)
                self.checkpointer.save("model_final", iteration=self.iter)  # the main process

    def _say_what_resumes(self, fresh: dict, extra: dict) -> None:
        path = self.checkpointer.loaded_path
        used = solver_state(self._trainer.optimizer, self.scheduler)
        meta = extra.get("ovseg_meta")
        warning, kept = resumed_solver_warning(self.cfg, fresh, used, meta, path)
        if warning:
            logger.warning(warning)
        if kept:  # this run's checkpoints record the values in effect, not the overridden
            record = self.cfg.clone()
            record.defrost()
            record.SOLVER.update(kept)
            self.checkpointer.cfg = record
        if self.start_iter > self.max_iter:
            logger.warning(
                f"--resume: {path} is at iteration {self.start_iter}, and SOLVER.MAX_ITER "
                f"{self.max_iter} is below it: nothing is trained (the checkpoint's model is "
                "evaluated). Raise SOLVER.MAX_ITER to train on, or evaluate it with --eval-only"
            )

    def train(self):
        """DefaultTrainer's; running out of memory (a loader worker killed, an allocation
        failed) ends it with the settings to lower and the checkpoint kept, in one line, and
        a dataset's file that cannot be used with the file, its dataset and what to do; a
        process stopped by another's failure logs one line, not a traceback of its own."""
        datasets = (*self.cfg.DATASETS.TRAIN, *self.cfg.DATASETS.TEST)
        with (
            naming_data_files(datasets),
            naming_resources(self.cfg, "training", self._kept_checkpoint, self.model),
            quiet_peer_failures("detectron2.engine.train_loop"),
        ):
            return super().train()

    def run_step(self) -> None:
        try:
            super().run_step()
        except Exception as e:
            # a loader worker killed while its batch was read may first show as a reset
            # connection: name the worker (detectron2 logs this error, then ends the run)
            dead = None if is_out_of_memory(e) else worker_death(e)
            if dead is None:
                raise
            raise dead from e

    def _kept_checkpoint(self) -> str:
        kept = self.checkpointer.kept_checkpoint()
        return kept[0].upper() + kept[1:]

    def after_train(self) -> None:
        try:
            self._after_train()
        except Exception as e:
            # a full disk that ended training fails the metrics' writes too: report the
            # checkpoint that did not fit, not the writer's bare "[Errno 28]" raised after it
            if isinstance(e.__context__, DiskFullError):
                logger.error(f"Could not write the run's metrics and events either: {e}")
                raise e.__context__ from None
            full = as_disk_full(e, self.cfg.OUTPUT_DIR)
            if full is None:
                raise
            raise full from e

    def _after_train(self) -> None:
        # detectron2's DefaultTrainer runs its hooks' after_train, never its step's: the
        # losses still pending (SOLVER.METRICS_PERIOD) of a run stopped early were lost
        # A run stopped early (an error, possibly raised in this process only) must not enter
        # a collective: the other processes are elsewhere (an evaluation's barrier, a DDP
        # all-reduce) and both would wait for the gloo/NCCL timeout (30 min) instead of ending
        write_pending = getattr(self._trainer, "write_pending_metrics", None)
        if write_pending is not None:
            write_pending(gather=comm.get_world_size() == 1 or self.iter >= self.max_iter)
        # TrainerBase.train counts one iteration past the loop even when a resumed finished
        # run trained none: its final evaluation is logged at MAX_ITER, as the first run's
        self.iter = min(self.iter, self.max_iter)
        super().after_train()

    def state_dict(self) -> dict:
        # v0.6's DefaultTrainer leaves out the optimizer (its SimpleTrainer's state), so a
        # resumed run restarted momentum and Adam moments; later detectron2 saves it as here
        ret = super().state_dict()
        ret.setdefault("_trainer", self._trainer.state_dict())
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:  # absent from checkpoints of v0.6's DefaultTrainer
            self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def test(cls, cfg: CfgNode, model, evaluators=None):
        # evaluation during training must not move the training RNGs (a resumed run, which
        # does not repeat it, would draw other numbers)
        state = rng_state()
        sync_norm_statistics(model)  # every rank scores with the checkpoint's statistics
        try:
            return super().test(cfg, model, evaluators)
        finally:
            set_rng_state(state)

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
