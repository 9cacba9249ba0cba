"""Teacher fingerprints and the on-disk text-embedding cache.

A fingerprint names what determines a teacher's outputs: the model (name, architecture
config, parameter shapes) and its weights (pretrained tag, checkpoint file identity, or a
hash of the parameters for a random initialisation). Text embeddings are cached per
(fingerprint, templates, names) under ``<cache_dir>/text_embeddings/<sha256>.pt``.

The cache folder (``~/.cache/ovseg`` by default) is shared by every run on the machine, so
several processes may write one key at once: each writes its own uniquely named temporary
file and renames it into place (:func:`ovseg.utils.io.atomic_write`), so a reader sees a
whole file or none, and the last writer wins with identical content. No lock is needed.
Temporaries a killed process left behind are removed once they are an hour old.

The folder is bounded: past ``$OVSEG_TEXT_CACHE_MAX_MB`` megabytes (2048 by default; 0: no
bound) a save removes the least recently used files (a load marks its file used), so a web
app or a sweep over many vocabularies does not fill the disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..utils.io import TMP_PREFIX, atomic_write
from ..utils.tensor_digest import update_with_tensor

__all__ = [
    "TextEmbeddingCache",
    "model_fingerprint",
    "state_dict_sha256",
    "text_cache_key",
    "weights_id",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MB = 2048
MAX_MB_ENV = "OVSEG_TEXT_CACHE_MAX_MB"


def cache_max_bytes() -> Optional[int]:
    """The text-embedding cache's bound in bytes from ``$OVSEG_TEXT_CACHE_MAX_MB`` (None: no
    bound)."""
    value = os.environ.get(MAX_MB_ENV, "").strip()
    try:
        mb = float(value) if value else float(DEFAULT_MAX_MB)
    except ValueError:
        raise ValueError(
            f"{MAX_MB_ENV}={value!r} is not a number of megabytes: set it to e.g. "
            f"{DEFAULT_MAX_MB}, or 0 for an unbounded text-embedding cache"
        ) from None
    return None if mb <= 0 else int(mb * 2**20)


# bump when the text-embedding computation changes, so old cache files are not reused
_TEXT_CACHE_VERSION = 1
# a temporary older than this was left by a killed writer (a live one takes milliseconds)
STALE_TEMPORARY_S = 3600.0


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over every state-dict entry's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        update_with_tensor(h, key, value)
    return h.hexdigest()


def weights_id(model: nn.Module, pretrained: str) -> str:
    """Identify a model's weights without reading them when possible.

    Args:
        model (nn.Module): the model, hashed only for a random initialisation.
        pretrained (str): an open_clip tag, a local checkpoint path, or "" (random init).

    Returns:
        str: ``"file:<abs path>:<size>:<mtime_ns>"``, ``"tag:<tag>"`` or ``"sha256:<hex>"``.
    """
    if pretrained and os.path.isfile(pretrained):
        st = os.stat(pretrained)
        return f"file:{os.path.abspath(pretrained)}:{st.st_size}:{st.st_mtime_ns}"
    if pretrained:
        return f"tag:{pretrained}"
    return f"sha256:{state_dict_sha256(model)}"


def model_fingerprint(model: nn.Module, name: str, pretrained: str) -> str:
    """SHA-256 hex fingerprint of (model name, its open_clip config, shapes, weights)."""
    import open_clip

    config = open_clip.get_model_config(name) if name else None
    shapes = [(k, list(v.shape)) for k, v in sorted(model.state_dict().items())]
    payload = {
        "name": name,
        "class": type(model).__name__,
        "config": config,
        "shapes": shapes,
        "weights": weights_id(model, pretrained),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def text_cache_key(fingerprint: str, names: Sequence[str], templates: Sequence[str]) -> str:
    """SHA-256 hex key of one text-embedding matrix."""
    payload = {
        "version": _TEXT_CACHE_VERSION,
        "teacher": fingerprint,
        "templates": list(templates),
        "names": list(names),
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


class TextEmbeddingCache:
    """Text embeddings on disk, one ``.pt`` file per key, written atomically."""

    def __init__(self, cache_dir: str | os.PathLike, max_bytes: Optional[int] = -1):
        """
        Args:
            cache_dir: the teacher's cache directory; files go to ``<cache_dir>/text_embeddings``.
            max_bytes: the folder's bound (None: none; -1: :func:`cache_max_bytes`).
        """
        self.root = Path(cache_dir) / "text_embeddings"
        self.max_bytes = cache_max_bytes() if max_bytes == -1 else max_bytes

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str, names: Sequence[str], templates: Sequence[str]) -> Optional[Tensor]:
        """Return the cached (K, D) embeddings, or None if absent or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
            emb = record["embeddings"]
            ok = list(record["names"]) == list(names) and list(record["templates"]) == list(
                templates
            )
        except FileNotFoundError:  # pruned by another process since is_file
            return None
        except Exception as e:  # a truncated or foreign file must not stop training
            logger.warning(f"Ignoring unreadable text-embedding cache {path}: {e}")
            return None
        if not ok or emb.shape[0] != len(names):
            logger.warning(f"Ignoring text-embedding cache {path}: names/templates do not match")
            return None
        try:
            os.utime(path)  # used now: the last to be pruned
        except OSError:  # read-only, or pruned meanwhile by another process
            pass
        return emb

    def save(
        self,
        key: str,
        emb: Tensor,
        names: Sequence[str],
        templates: Sequence[str],
        fingerprint: str,
    ) -> Path:
        """Write (K, D) embeddings atomically (a cache: rebuilt if lost, so no fsync)."""
        path = self.path(key)
        record = {
            "embeddings": emb.detach().cpu().float().contiguous(),
            "names": list(names),
            "templates": list(templates),
            "fingerprint": fingerprint,
        }
        atomic_write(path, lambda f: torch.save(record, f), fsync=False)
        self.remove_stale_temporaries()
        self.prune(keep=path)
        return path

    def prune(self, keep: Optional[Path] = None) -> int:
        """Remove the least recently used files (by modification time, which a load renews)
        while the folder holds more than ``max_bytes``; never ``keep``. Returns how many."""
        if self.max_bytes is None or not self.root.is_dir():
            return 0
        files, total = [], 0
        for entry in os.scandir(self.root):
            if entry.name.startswith(TMP_PREFIX) or not entry.name.endswith(".pt"):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime_ns, st.st_size, entry.path))
            total += st.st_size
        removed, before, refused = 0, total, []
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if keep is not None and os.path.abspath(path) == os.path.abspath(keep):
                continue
            try:
                os.remove(path)
            except FileNotFoundError:  # another process pruned it
                pass
            except OSError as e:  # another user's file in a shared cache, a read-only folder
                refused.append((path, e))
                continue
            total, removed = total - size, removed + 1
        if refused:
            self._warn_unprunable(refused, total)
        if removed:
            logger.info(
                f"Text-embedding cache {self.root} held {before / 2**20:.1f} MB, over its "
                f"{self.max_bytes / 2**20:.0f} MB (${MAX_MB_ENV}): removed the {removed} least "
                "recently used files"
            )
        return removed

    def _warn_unprunable(self, refused: list, total: int) -> None:
        """Warn once per cache that files past its bound could not be removed (the embeddings
        were written: only the bound is not kept)."""
        if getattr(self, "_warned_unprunable", False):
            return
        self._warned_unprunable = True
        path, error = refused[0]
        logger.warning(
            f"Text-embedding cache {self.root} stays at {total / 2**20:.1f} MB, over its "
            f"{self.max_bytes / 2**20:.0f} MB (${MAX_MB_ENV}): {len(refused)} least recently "
            f"used file(s) cannot be removed ({path}: {error.strerror or error}). The cache "
            f"works; remove them by hand, raise ${MAX_MB_ENV} (0: no bound), or point "
            "MODEL.CLIP.CACHE_DIR or $OVSEG_CACHE at a folder of your own"
        )

    def try_save(self, *args, **kwargs) -> Optional[Path]:
        """:meth:`save`, or None with one warning per cache when the folder cannot be written
        (read-only, full, a file in the way): the embeddings are only recomputed later."""
        try:
            return self.save(*args, **kwargs)
        except OSError as e:
            if not getattr(self, "_warned_unwritable", False):
                self._warned_unwritable = True
                logger.warning(
                    "Cannot write the text-embedding cache in %s (%s): embeddings are "
                    "computed again in each process that needs them. Point MODEL.CLIP.CACHE_DIR "
                    "or $OVSEG_CACHE at a writable folder.",
                    self.root,
                    e,
                )
            return None

    def remove_stale_temporaries(self, max_age_s: float = STALE_TEMPORARY_S) -> int:
        """Delete temporaries older than ``max_age_s`` (left by killed writers; younger ones
        may belong to a live process); return how many were removed."""
        removed, now = 0, time.time()
        for entry in os.scandir(self.root) if self.root.is_dir() else ():
            if not entry.name.startswith(TMP_PREFIX):
                continue
            try:
                if now - entry.stat().st_mtime > max_age_s:
                    os.remove(entry.path)
                    removed += 1
            except OSError:  # another process removed or renamed it; another user's file
                continue
        return removed
