"""A checkpoint's record of its own contents, checked at every load: a changed file is refused.

torch's zip reader checks no CRC, so a bit flipped inside a tensor of a saved checkpoint
(a disk error, a bad copy) used to load without a word and evaluate, resume or train on other
numbers. Every save of :class:`~ovseg.engine.checkpoint.AtomicCheckpointer` records, in
``ovseg_meta["content_sha256"]``, the SHA-256 of each entry of the file ("model", "trainer",
"iteration", the data position, the RNG states: :func:`content_digests`, tensors hashed in
place by ``ovseg.utils.tensor_digest``) and, under "meta", that of ``ovseg_meta`` itself less
the record (its config, teacher record and architecture, read by every load); every load
recomputes those it uses ("model" and the metadata for weights, all of them for ``--resume``)
and stops with :class:`CheckpointCorruptedError` on a mismatch (:func:`check_contents`).
Official models converted by ``tools/convert_checkpoint.py`` record theirs too
(``ovseg.convert.core.save_converted``). Files without the record (older ovseg or converted
files, detectron2's own) load as before, and records without "meta" (saved before it was
added) check their entries alone.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional

from ..utils.tensor_digest import value_sha256

__all__ = [
    "DIGEST_KEY",
    "changed_entries",
    "check_contents",
    "content_digests",
    "describe_changed",
]

DIGEST_KEY = "content_sha256"
# bump when value_sha256's canonical form changes: a record of another format is not checked
_FORMAT = 1


def content_digests(data: Mapping[str, Any], meta_key: str) -> Dict[str, Any]:
    """The record of a checkpoint ``data`` about to be saved.

    Args:
        data: the checkpoint's entries.
        meta_key (str): the entry holding ovseg's metadata, where the record goes.

    Returns:
        dict: each other entry's SHA-256 under "entries" and, under "meta", the metadata's
        less the record (which cannot hold its own digest).
    """
    entries = {str(k): value_sha256(v, str(k)) for k, v in data.items() if k != meta_key}
    record: Dict[str, Any] = {"format": _FORMAT, "entries": entries}
    meta = data.get(meta_key)
    if isinstance(meta, Mapping):
        record["meta"] = _meta_sha256(meta, meta_key)
    return record


def _meta_sha256(meta: Mapping[str, Any], meta_key: str) -> str:
    return value_sha256({k: v for k, v in meta.items() if k != DIGEST_KEY}, meta_key)


def changed_entries(
    checkpoint: Mapping[str, Any], meta_key: str, which: Optional[Iterable[str]] = None
) -> List[str]:
    """The entries of a loaded checkpoint whose content differs from its record.

    Args:
        checkpoint: the dict read from the file.
        meta_key (str): the entry holding ovseg's metadata.
        which: the entries to check, ``meta_key`` for the metadata (None: every recorded one).

    Returns:
        list[str]: the changed entries, also recorded ones now missing ([] without a record).
    """
    meta = checkpoint.get(meta_key)
    record = meta.get(DIGEST_KEY) if isinstance(meta, Mapping) else None
    if not isinstance(record, Mapping) or record.get("format") != _FORMAT:
        return []
    entries = record.get("entries")
    if not isinstance(entries, Mapping):
        return [DIGEST_KEY]
    names = list(entries) if which is None else [k for k in which if k in entries]
    changed = []
    for name in names:
        if name not in checkpoint or value_sha256(checkpoint[name], name) != entries[name]:
            changed.append(name)
    # absent from records of before it was added: those check their entries alone
    meta_digest = record.get("meta")
    if meta_digest is not None and (which is None or meta_key in which):
        if _meta_sha256(meta, meta_key) != meta_digest:
            changed.append(meta_key)
    return changed


def describe_changed(changed: List[str]) -> str:
    """Why a checkpoint with the :func:`changed_entries` ``changed`` is refused.

    Args:
        changed (list[str]): the changed entries (not empty).

    Returns:
        str: "its 'model' entry no longer matches the SHA-256 recorded when it was saved".
    """
    what = (
        f"{changed[0]!r} entry no longer matches"
        if len(changed) == 1
        else (f"{', '.join(map(repr, changed))} entries no longer match")
    )
    return f"its {what} the SHA-256 recorded when it was saved"


def check_contents(
    path: str,
    checkpoint: Mapping[str, Any],
    meta_key: str,
    which: Optional[Iterable[str]] = None,
) -> None:
    """Refuse a checkpoint whose contents changed after it was written.

    Args:
        path (str): the file, for the message.
        checkpoint, meta_key, which: as :func:`changed_entries`.

    Raises:
        CheckpointCorruptedError: naming the file, the changed entries and what to do.
    """
    changed = changed_entries(checkpoint, meta_key, which)
    if not changed:
        return
    from .checkpoint_files import CheckpointCorruptedError

    raise CheckpointCorruptedError(
        f"Checkpoint {path} changed after it was written: {describe_changed(changed)} (disk "
        "or copy corruption), so it was not loaded. Copy it again from where it was saved, or "
        "use another checkpoint (an earlier model_*.pth of the run)"
    )
