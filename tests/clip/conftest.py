"""Tiny random-init CLIP teachers (configs/clip/*.json), built once per session."""

from __future__ import annotations

import pytest
from ovseg_testing import TINY_RN, TINY_VIT, random_clip_model

from ovseg.clip import CLIPTeacher


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Keep builds with CACHE_DIR="" out of the user's ~/.cache/ovseg."""
    monkeypatch.setenv("OVSEG_CACHE", str(tmp_path / "ovseg_cache"))


@pytest.fixture(scope="session")
def vit_parts():
    return random_clip_model(TINY_VIT)


@pytest.fixture(scope="session")
def rn_parts():
    return random_clip_model(TINY_RN)


@pytest.fixture(scope="session")
def vit_teacher(vit_parts):
    model, tokenizer, name = vit_parts
    return CLIPTeacher(model, tokenizer, name=name)


@pytest.fixture(scope="session")
def rn_teacher(rn_parts):
    model, tokenizer, name = rn_parts
    return CLIPTeacher(model, tokenizer, name=name)
