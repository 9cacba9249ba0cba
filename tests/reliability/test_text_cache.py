"""The text-embedding cache: keyed by model, weights and templates; written atomically;
safe with several processes at once; temporaries of killed writers are cleaned."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest
import torch
from ovseg_testing import TINY_VIT, random_clip_model
from ovseg_testing.logs import records

from ovseg.clip import CLIPTeacher
from ovseg.clip import cache as cache_module
from ovseg.clip.cache import TextEmbeddingCache
from ovseg.utils.io import TMP_PREFIX

NAMES = ["cat", "dog"]
TEMPLATES = ["a photo of a {}."]


def _teacher(cache_dir, seed=0):
    model, tokenizer, name = random_clip_model(TINY_VIT, seed=seed)
    return CLIPTeacher(model, tokenizer, name=name, cache_dir=cache_dir)


def _files(cache_dir):
    return sorted(p.name for p in (cache_dir / "text_embeddings").iterdir())


def test_key_holds_model_weights_and_templates(tmp_path):
    a = _teacher(tmp_path)
    emb = a.encode_text(NAMES, TEMPLATES)
    assert len(_files(tmp_path)) == 1
    assert torch.equal(_teacher(tmp_path).encode_text(NAMES, TEMPLATES), emb)  # reused
    assert len(_files(tmp_path)) == 1
    other_weights = _teacher(tmp_path, seed=1).encode_text(NAMES, TEMPLATES)
    assert len(_files(tmp_path)) == 2 and not torch.allclose(other_weights, emb)
    a.encode_text(NAMES, ["a sketch of a {}."])
    assert len(_files(tmp_path)) == 3


def _hammer(root: str, worker: int, rounds: int, queue) -> None:
    """Write and read one key many times; report every record that is not whole."""
    torch.set_num_threads(1)
    cache = TextEmbeddingCache(root)
    bad = 0
    for i in range(rounds):
        emb = torch.full((2, 512), float(worker * 1000 + i))  # a ~4 kB record
        cache.save("shared", emb, NAMES, TEMPLATES, "fp")
        got = cache.load("shared", NAMES, TEMPLATES)
        if got is None or got.shape != (2, 512) or not (got == got[0, 0]).all():
            bad += 1
    queue.put(bad)


def test_several_processes_share_one_key_safely(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 40, queue)) for w in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [0, 0, 0, 0]
    assert _files(tmp_path) == ["shared.pt"]  # no temporary left behind


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    cache = TextEmbeddingCache(tmp_path)
    cache.root.mkdir(parents=True)
    stale = cache.root / f"{TMP_PREFIX}dead1234key.pt"
    fresh = cache.root / f"{TMP_PREFIX}live5678key.pt"
    stale.write_bytes(b"half a file")
    fresh.write_bytes(b"being written")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    cache.save("k", torch.zeros(2, 4), NAMES, TEMPLATES, "fp")
    assert not stale.exists() and fresh.exists()  # a live writer's file is left alone


@pytest.mark.parametrize("content", [b"", b"truncated torch file"])
def test_unreadable_cache_file_is_recomputed(tmp_path, content):
    teacher = _teacher(tmp_path)
    emb = teacher.encode_text(NAMES, TEMPLATES)
    (path,) = (tmp_path / "text_embeddings").iterdir()
    path.write_bytes(content)
    again = _teacher(tmp_path).encode_text(NAMES, TEMPLATES)
    assert torch.allclose(again, emb)


def test_cache_over_its_bound_removes_the_least_recently_used(tmp_path, monkeypatch):
    # unbounded, a web app or a sweep over many vocabularies filled the disk with one file per
    # vocabulary; a load renews a file's time, a save prunes the oldest past the bound
    emb = torch.randn(2, 8)
    probe = TextEmbeddingCache(tmp_path, max_bytes=None)
    size = probe.save("probe", emb, NAMES, TEMPLATES, "fp").stat().st_size
    probe.path("probe").unlink()
    cache = TextEmbeddingCache(tmp_path, max_bytes=int(3.5 * size))
    for i, key in enumerate("abc"):
        cache.save(key, emb, NAMES, TEMPLATES, "fp")
        os.utime(cache.path(key), ns=(10**18 + i * 10**9,) * 2)  # a, b, c: oldest first
    assert cache.load("a", NAMES, TEMPLATES) is not None  # used now
    cache.save("d", emb, NAMES, TEMPLATES, "fp")
    assert _files(tmp_path) == ["a.pt", "c.pt", "d.pt"]  # b: the least recently used
    monkeypatch.setenv("OVSEG_TEXT_CACHE_MAX_MB", "0")
    assert TextEmbeddingCache(tmp_path).max_bytes is None
    monkeypatch.setenv("OVSEG_TEXT_CACHE_MAX_MB", "lots")
    with pytest.raises(ValueError, match="OVSEG_TEXT_CACHE_MAX_MB='lots' is not a number"):
        TextEmbeddingCache(tmp_path)


def test_a_file_the_bound_cannot_remove_keeps_the_saved_embeddings(tmp_path, monkeypatch):
    # a shared cache holding another user's files: removing one past the bound fails, which
    # used to end the save in "Cannot write the text-embedding cache" though it was written
    emb = torch.randn(2, 8)
    cache = TextEmbeddingCache(tmp_path, max_bytes=1)
    cache.save("a", emb, NAMES, TEMPLATES, "fp")
    stale = cache.root / f"{TMP_PREFIX}old.pt"
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))  # a killed writer's, long ago
    remove = os.remove

    def refuse(path):
        if os.path.basename(path) in ("a.pt", stale.name):
            raise PermissionError(13, "Permission denied", path)
        remove(path)

    monkeypatch.setattr(cache_module.os, "remove", refuse)
    with records("ovseg.clip.cache") as logged:
        for key in "bc":
            assert cache.try_save(key, emb, NAMES, TEMPLATES, "fp") == cache.path(key)
    assert _files(tmp_path) == sorted(["a.pt", "c.pt", stale.name])  # b pruned, c kept
    assert torch.equal(cache.load("c", NAMES, TEMPLATES), emb)
    messages = [r.getMessage() for r in logged]
    assert len(messages) == 1, messages  # once per cache
    assert "1 least recently used file(s) cannot be removed" in messages[0], messages
    assert f"{cache.path('a')}: Permission denied" in messages[0]
    assert "raise $OVSEG_TEXT_CACHE_MAX_MB" in messages[0]
