"""ovseg's checkpointer: atomic saves, data-only loads, misfits refused, resume falls back.

- saves go through a temporary file and a rename, so a kill while saving leaves the previous
  checkpoint and ``last_checkpoint`` intact; every save records the model's meta-architecture
  and ovseg's version (``checkpoint_fit.checkpoint_meta``) and, when ``save_rng``, the saving
  process's RNG states;
- loads never run code from a file: ``.pkl`` through a data-only unpickler, everything else
  through ``torch.load(weights_only=True)`` (``ovseg.utils.safe_load``);
- a checkpoint that does not fit the model raises (``checkpoint_fit.check_fit``);
- ``--resume`` whose latest checkpoint is damaged (unreadable, or changed since it was saved:
  :mod:`.checkpoint_digest`) resumes from the newest intact earlier one, chosen by the main
  process, with a warning naming both; the damaged file is left as it is until this run saves
  that name again, which moves it to ``<name>.pth.damaged`` for inspection first.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils import comm
from detectron2.utils.file_io import Detectron2Handler

from ..utils.downloads import explain_download_failure, local_weights_problem
from ..utils.io import DiskFullError, atomic_write, atomic_write_text
from ..utils.safe_load import UnsafeWeightsError
from .checkpoint_digest import DIGEST_KEY, check_contents, content_digests
from .checkpoint_files import (
    UNREADABLE,
    CheckpointCorruptedError,
    CheckpointReadError,
    earlier_checkpoints,
    first_sentence,
    read_checkpoint,
    read_intact,
)
from .checkpoint_fit import (
    META_KEY,
    CheckpointMismatchError,
    check_fit,
    checkpoint_meta,
    describe_writer,
    recorded_architecture,
)
from .checkpoint_record import (
    changed_settings,
    check_teacher,
    describe_changes,
    warn_changed_settings,
)
from .resume import fell_back_warning, no_intact_checkpoint, rng_state

__all__ = [
    "AtomicCheckpointer",
    "CheckpointCorruptedError",
    "CheckpointReadError",
    "load_model_weights",
]


class AtomicCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer, made safe to load from and hard to load wrongly.

    Args:
        model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``.
        complete (bool): every weight of the model must come from the file (evaluation, the
            demo). Otherwise a file must be complete only when it holds a whole model by
            construction (an ovseg run's, one of ovseg's Trainer without its record, a
            converted whole model: ``checkpoint_fit.describe_writer``), and must fit at least
            in part when it is a converted backbone, a model-zoo file or a checkpoint of
            detectron2's own trainer.
        some (bool): False lets a file without ovseg's record fit nothing.
        cfg (CfgNode): the run's config: saves record it; loads read
            MODEL.CLIP.ALLOW_TEACHER_MISMATCH from it and, when evaluating or resuming, warn
            about MODEL settings that differ from the checkpoint's (:mod:`.checkpoint_record`).
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        complete: bool = False,
        some: bool = True,
        cfg=None,
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.complete = complete
        self.some = some
        self.cfg = cfg
        self.save_rng = False  # the Trainer turns it on
        # (iteration, every rank's RNG states) gathered by the Trainer's hook in every process
        # just before a due save: the main process alone cannot gather them at save time
        self.gathered_rng: Optional[tuple] = None
        self._path: Optional[str] = None
        self._resuming = False
        self._picked: Optional[Tuple[str, Dict[str, Any]]] = None  # the file --resume chose
        self._refused: set = set()  # the damaged files --resume refused: saves set them aside
        self._entries: Optional[List[str]] = None  # what a load uses (None: everything)

    @property
    def loaded_path(self) -> Optional[str]:
        """The file the last load read (an earlier one when the latest was unreadable)."""
        return self._path

    # ------------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        # only the main process saves (detectron2 gives the other ranks no checkpoint hook),
        # so a checkpoint holds its RNG states alone: one-process runs resume exactly
        rng = [rng_state()] if self.save_rng else None
        gathered = self.gathered_rng
        if rng is not None and gathered is not None and gathered[0] == kwargs.get("iteration"):
            rng = gathered[1]
        meta = checkpoint_meta(self.model, self.cfg)
        data = {"model": self.model.state_dict(), META_KEY: meta}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if rng is not None:
            data["rng_states"] = rng
        data.update(kwargs)
        # hashed as written: every load recomputes what it uses (a changed file is refused)
        meta[DIGEST_KEY] = content_digests(data, META_KEY)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self._set_aside_if_refused(save_file)
        self.logger.info(f"Saving checkpoint to {save_file}")
        try:
            atomic_write(save_file, lambda f: torch.save(data, f), size=_stored_bytes(data))
        except DiskFullError as e:
            raise self._disk_full(e) from e
        self.tag_last_checkpoint(f"{name}.pth")

    def refused(self, path: str) -> bool:
        """Whether --resume refused ``path`` as damaged (it is replaced by this run's save)."""
        return os.path.abspath(path) in self._refused

    def _set_aside_if_refused(self, path: str) -> None:
        """Move a file --resume refused as damaged out of the way of the save replacing it,
        to ``<name>.pth.damaged`` (kept for inspection; no run reads it)."""
        if not self.refused(path) or not os.path.isfile(path):
            return
        aside, n = f"{path}.damaged", 1
        while os.path.exists(aside):
            aside, n = f"{path}.damaged.{n}", n + 1
        os.replace(path, aside)
        self._refused.discard(os.path.abspath(path))
        self.logger.warning(
            f"{path} was refused as damaged by --resume: moved to {aside} for inspection; "
            "this run's save of that name replaces it"
        )

    def kept_checkpoint(self) -> str:
        """What a run that stops now keeps, and how ``--resume`` goes on from it."""
        if self.has_checkpoint():
            latest = self.get_checkpoint_file()
            if self.refused(latest) and self.loaded_path:  # no save since --resume fell back
                return (
                    f"the run's last intact checkpoint {self.loaded_path} is kept ({latest}, "
                    "which last_checkpoint names, is damaged): --resume continues from it"
                )
            return f"the run's last checkpoint {latest} is kept: --resume continues from it"
        return "no checkpoint of this run was saved yet: --resume starts it again"

    def _disk_full(self, error: DiskFullError) -> DiskFullError:
        """``error`` saying which checkpoint the run keeps, and how to go on from it."""
        return DiskFullError(
            f"{error}; {self.kept_checkpoint()}",
            path=error.path,
            needed=error.needed,
            free=error.free,
            code=error.errno,
        )

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write_text(path, last_filename_basename)

    # ----------------------------------------------------------------------- loading
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        self._path = path
        # weights alone use the file's "model" and its metadata (the architecture, teacher
        # and config checked against); a resume uses all it holds
        self._entries = ["model", META_KEY] if checkpointables == [] else None
        what = local_weights_problem(path)
        if what:  # detectron2 only asserts
            raise FileNotFoundError(
                f"Checkpoint {path} (MODEL.WEIGHTS) {what}; pass a weight file, e.g. the "
                "model_final.pth of a run of this config, or leave MODEL.WEIGHTS empty for a "
                "model that needs no weights (MaskCLIP)"
            )
        if "://" in path:  # downloaded once into iopath's cache, then read from there
            d2 = Detectron2Handler
            source = path.replace(d2.PREFIX, d2.S3_DETECTRON2_PREFIX)
            with explain_download_failure(
                os.path.basename(path),
                source,
                "MODEL.WEIGHTS",
                empty_means="starts from random init",
            ):
                self.path_manager.get_local_path(path)
        return super().load(path, checkpointables)

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """As detectron2's; a resumed checkpoint must be complete, and a damaged latest one
        gives way to the newest intact earlier one (:meth:`_resumed_file`)."""
        if resume and self.has_checkpoint():
            self._resuming = True
            try:
                return self.load(self._resumed_file())
            finally:
                self._resuming, self._picked = False, None
        return self.load(path, checkpointables=[])

    def _resumed_file(self) -> str:
        """The checkpoint --resume loads, chosen by the main process alone: every rank must
        continue from the same one, also where machines do not see a folder alike (a file
        being copied, a stale cache), and the other ranks need not read the refused files."""
        if comm.get_world_size() == 1:
            return self._pick_intact()
        chosen, error = "", None
        if comm.is_main_process():
            try:
                chosen = self._pick_intact()
            except Exception as e:  # the other ranks wait for the answer: they get this
                error = e
        chosen, message = comm.all_gather((chosen, str(error or "")))[0]
        if error is not None:
            raise error
        if message:
            raise CheckpointReadError(f"the main process refused to resume: {message}")
        return chosen

    def _pick_intact(self) -> str:
        """The newest intact checkpoint: last_checkpoint's, else the newest intact earlier
        ``model_*.pth``; its contents are kept for the load, the damaged files refused before
        it for :meth:`save` to set aside.

        Raises:
            CheckpointReadError: none is intact, naming each file and why it was refused.
        """
        last = os.path.join(self.save_dir, "last_checkpoint")
        latest = self.get_checkpoint_file()
        refused = []
        for path in [latest, *earlier_checkpoints(self.save_dir, latest)]:
            data, why = read_intact(path, self.logger)
            if data is None:
                refused.append((path, why))
                continue
            self._picked = (path, data)
            self._refused = {os.path.abspath(p) for p, _ in refused}
            if refused:
                training = "trainer" in self.checkpointables
                iteration = data.get("iteration", "?")
                self.logger.warning(fell_back_warning(refused, path, iteration, last, training))
            return path
        raise CheckpointReadError(no_intact_checkpoint(refused, last))

    def _load_file(self, filename: str) -> Dict[str, Any]:
        picked = self._picked
        if picked is not None and os.path.abspath(picked[0]) == os.path.abspath(filename):
            self._picked = None  # read and checked by _pick_intact
            return picked[1]
        try:
            data = read_checkpoint(filename, self.logger)
        except UnsafeWeightsError:
            raise
        except UNREADABLE as e:
            raise CheckpointReadError(
                f"Checkpoint {filename} cannot be read (truncated or damaged?): "
                f"{first_sentence(e)}."
            ) from e
        check_contents(filename, data, META_KEY, self._entries)
        return data

    def _load_model(self, checkpoint: Dict[str, Any]):
        _refuse_non_weights(checkpoint.get("model", {}), str(self._path))
        recorded = recorded_architecture(checkpoint)
        writer, whole = describe_writer(checkpoint)
        path = str(self._path)
        if checkpoint.pop("matching_heuristics", False):
            # an ImageNet .pkl: matched by name suffix here, not in detectron2's _load_model,
            # so the weights that fit are counted (the missing keys cannot count them: a
            # FrozenBatchNorm fills the running statistics a file lacks, matched or not)
            self._convert_ndarray_to_tensor(checkpoint["model"])
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(),
                checkpoint["model"],
                c2_conversion=checkpoint.get("__author__") == "Caffe2",
            )
        names = {_strip_module(k) for k in checkpoint.get("model", {})}
        meta = checkpoint.get(META_KEY)
        meta = meta if isinstance(meta, dict) else {}
        incompatible = super()._load_model(checkpoint)
        loaded = len(names & set(self.model.state_dict())) - len(incompatible.incorrect_shapes)
        complete = self.complete or self._resuming or whole
        changed = changed_settings(meta.get("config"), self.cfg, everything=True)
        check_fit(
            self.model,
            incompatible,
            path=path,
            recorded=recorded,
            complete=complete,
            num_loaded=loaded,
            some=self.some,
            num_in_file=len(names),
            writer=writer,
            hint=describe_changes(changed),
        )
        if complete:
            allow = self.cfg is not None and self.cfg.MODEL.CLIP.get("ALLOW_TEACHER_MISMATCH")
            check_teacher(meta.get("clip_teacher"), self.model, path=path, allow=bool(allow))
        if self.complete or self._resuming:
            warn_changed_settings(meta.get("config"), self.cfg, path)
        return incompatible


def _refuse_non_weights(weights: Dict[str, Any], path: str) -> None:
    """A file whose "model" (or top level) holds more than tensors is no model checkpoint:
    say what it holds instead of fvcore's "Unsupported type found in checkpoint"."""
    other = sorted(k for k, v in weights.items() if not isinstance(v, (torch.Tensor, np.ndarray)))
    if not other:
        return
    if "ovseg_pretrain" in weights:
        what = "a CLIP checkpoint of tools/pretrain_toy_clip.py: it goes in MODEL.CLIP.PRETRAINED"
    elif isinstance(weights.get("state_dict"), dict):
        what = (
            "an official (Lightning / mmseg) checkpoint, its weights under 'state_dict': "
            "convert it with tools/convert_checkpoint.py"
        )
    else:
        what = "no model checkpoint of ovseg or detectron2"
    raise CheckpointMismatchError(
        f"{path} holds {', '.join(map(repr, other[:5]))}{' ...' if len(other) > 5 else ''}, "
        f"which are not weights: it is {what}. MODEL.WEIGHTS (or the weights argument) takes "
        "a checkpoint of a run (output/<run>/model_final.pth) or a converted one"
    )


def load_model_weights(
    model: torch.nn.Module, path: str, *, complete: bool = True, some: bool = True, cfg=None
) -> None:
    """Load ``path`` (``MODEL.WEIGHTS``) into ``model`` safely, refusing a misfit.

    Args:
        model: the model.
        path (str): a ``.pth`` / ``.pkl`` weight file.
        complete (bool): every weight must come from the file (inference); False for a file
            that initialises part of a model (a converted backbone).
        some (bool): False lets such a file fit nothing.
        cfg (CfgNode): the config of ``model`` (see :class:`AtomicCheckpointer`).
    """
    loader = AtomicCheckpointer(model, complete=complete, some=some, cfg=cfg)
    loader.load(path, checkpointables=[])


def _stored_bytes(obj: Any) -> int:
    """The bytes of the tensors and arrays in ``obj`` (nested dicts, lists, tuples): about
    the size torch.save gives it, to say how much room a checkpoint needs."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_stored_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_stored_bytes(v) for v in obj)
    return 0


def _strip_module(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key
