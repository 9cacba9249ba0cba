"""build_clip_teacher: JSON configs, checkpoints, tags, offline errors (no real network)."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import urllib.request

import open_clip
import open_clip.pretrained
import pytest
import torch
from ovseg_testing import TINY_RN, TINY_VIT, random_clip_model, random_image_batch, tiny_clip_cfg
from torch import nn

from ovseg.clip import CLIPTeacher, build_clip_teacher
from ovseg.clip.build import OpenCLIPVersionError, check_open_clip_version


@pytest.mark.parametrize("config, dim, stride", [(TINY_VIT, 32, 16), (TINY_RN, 48, 32)])
def test_build_from_json_config(config, dim, stride, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ovseg.clip.build"):
        teacher = build_clip_teacher(tiny_clip_cfg(str(config), cache_dir=str(tmp_path)))
    assert "randomly initialised" in caplog.text
    assert isinstance(teacher, CLIPTeacher)
    assert teacher.name == config.stem and teacher.cache_dir == str(tmp_path)
    assert (teacher.embed_dim, teacher.patch_size) == (dim, stride)
    assert not any(p.requires_grad for p in teacher.parameters())
    images = random_image_batch(1, 64, 64)
    assert teacher.encode_image(images).shape == (1, dim)
    assert teacher.dense_embeddings(images).shape == (1, dim, 64 // stride, 64 // stride)
    assert teacher.encode_text(["cat"], ["a {}."]).shape == (1, dim)
    assert len(list((tmp_path / "text_embeddings").glob("*.pt"))) == 1


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSEG_CACHE", str(tmp_path / "env_cache"))
    teacher = build_clip_teacher(tiny_clip_cfg(str(TINY_VIT)))
    assert teacher.cache_dir == str(tmp_path / "env_cache")


def test_local_checkpoint(tmp_path):
    model = random_clip_model(TINY_VIT, seed=3)[0]
    path = tmp_path / "tiny_vit_seed3.pt"
    torch.save(model.state_dict(), path)
    teacher = build_clip_teacher(tiny_clip_cfg(str(TINY_VIT), pretrained=str(path)))
    loaded = teacher.model.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())
    random = CLIPTeacher(model, teacher.tokenizer, name=teacher.name)
    assert teacher.fingerprint != random.fingerprint  # file identity, not a weight hash


def test_missing_checkpoint_names_it(tmp_path):
    missing = str(tmp_path / "nowhere" / "clip.pt")
    with pytest.raises(FileNotFoundError, match="nowhere/clip.pt"):
        build_clip_teacher(tiny_clip_cfg(str(TINY_VIT), pretrained=missing))


def test_bad_model_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_config.json"):
        build_clip_teacher(tiny_clip_cfg(str(tmp_path / "no_such_config.json")))
    with pytest.raises(ValueError, match="'ViT-Q-99'"):
        build_clip_teacher(tiny_clip_cfg("ViT-Q-99"))
    bad = tmp_path / "half_config.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ValueError, match=r"lacks \['vision_cfg', 'text_cfg'\]"):
        build_clip_teacher(tiny_clip_cfg(str(bad)))
    clash = tmp_path / "RN50.json"
    clash.write_text(TINY_RN.read_text())
    with pytest.raises(ValueError, match="built-in 'RN50'"):
        build_clip_teacher(tiny_clip_cfg(str(clash)))


def test_unknown_tag_lists_known_ones():
    with pytest.raises(ValueError, match="'not_a_tag'.*openai"):
        build_clip_teacher(tiny_clip_cfg("ViT-B-16", pretrained="not_a_tag"))


def test_offline_tag_says_what_to_download(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(RuntimeError) as info:
        build_clip_teacher(tiny_clip_cfg("ViT-B-16", pretrained="openai", cache_dir=str(tmp_path)))
    message = str(info.value)
    pcfg = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    repo = pcfg["hf_hub"].rstrip("/")
    assert "'ViT-B-16' tag 'openai'" in message and "Network is unreachable" in message
    assert f"https://huggingface.co/{repo}/resolve/main/open_clip_pytorch_model.bin" in message
    assert os.path.join(str(tmp_path), "weights", "ViT-B-16_openai.bin") in message
    assert "set MODEL.CLIP.PRETRAINED to that file's path" in message
    # OpenAI weights use QuickGELU, which a file path cannot tell open_clip
    assert "MODEL.CLIP.MODEL_NAME to 'ViT-B-16-quickgelu'" in message


def test_offline_through_open_clip_download_code(tmp_path, monkeypatch):
    """The real open_clip download path (HF hub, then URL) failing offline."""

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", offline)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match="tag 'openai'.*huggingface.co"):
        build_clip_teacher(tiny_clip_cfg("RN50", pretrained="openai", cache_dir=str(tmp_path)))


def test_tag_applies_its_preprocessing_and_quickgelu(tmp_path, monkeypatch):
    """A tag's own mean/std and QuickGELU reach the model (open_clip would only warn)."""
    model = random_clip_model(TINY_VIT, seed=5)[0]
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    pcfg = {"hf_hub": "org/tiny/", "quick_gelu": True, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    monkeypatch.setattr(
        open_clip, "get_pretrained_cfg", lambda name, tag: pcfg if tag == "faketag" else {}
    )
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", lambda cfg, **kw: str(path))
    teacher = build_clip_teacher(tiny_clip_cfg(str(TINY_VIT), pretrained="faketag"))
    act = teacher.model.visual.transformer.resblocks[0].mlp.gelu
    assert type(act).__name__ == "QuickGELU"
    assert torch.allclose(teacher.pixel_mean.flatten(), torch.full((3,), 127.5))
    assert torch.allclose(teacher.pixel_std.flatten(), torch.full((3,), 63.75))
    assert torch.equal(teacher.model.visual.proj, model.visual.proj)
    assert teacher.pretrained == "faketag"


def test_build_uses_no_network_without_tag(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("network touched")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", forbidden)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", forbidden)
    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    teacher = build_clip_teacher(tiny_clip_cfg(str(TINY_RN), cache_dir=str(tmp_path)))
    assert isinstance(teacher.model, nn.Module)


@pytest.mark.parametrize("version", ["2.20.0", "2.24.0", "2.32.0"])
def test_an_open_clip_older_than_3_is_named_with_the_fix(version):
    # 2.x fails inside open_clip with a TypeError (pretrained_text), far from the cause
    with pytest.raises(OpenCLIPVersionError, match=f"open_clip_torch {version} is installed"):
        check_open_clip_version(version)
    for fine in ("3.0.0", "3.3.0", "3.10.1.dev0"):
        check_open_clip_version(fine)
    check_open_clip_version()  # the installed one


def test_open_clip_sources_without_package_metadata_are_checked_by_their_version(monkeypatch):
    # sources on PYTHONPATH (tools/make_gpu_bundle.sh's folder) have no dist-info: building a
    # teacher there failed with PackageNotFoundError before it could start
    def no_metadata(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_metadata)
    check_open_clip_version()
    monkeypatch.setattr(open_clip, "__version__", "2.24.0")
    with pytest.raises(OpenCLIPVersionError, match="open_clip_torch 2.24.0 is installed"):
        check_open_clip_version()
