"""CLIPTeacher: frozen module behaviour, checkpoints, text embeddings and their cache."""

from __future__ import annotations

import copy
import json
import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F
from ovseg_testing import TINY_VIT, random_clip_model, random_image_batch
from torch import nn

from ovseg.clip import CLIPTeacher
from ovseg.clip import teacher as teacher_module

TEMPLATES = ("a photo of a {}.", "a drawing of the {}.", "{} in the scene.")


class Student(nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.teacher = teacher


def _count_text_forwards(model):
    calls = []
    handle = model.token_embedding.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_frozen_and_always_eval(vit_parts):
    model, tokenizer, name = copy.deepcopy(vit_parts)
    student = Student(CLIPTeacher(model, tokenizer, name=name))
    assert all(not p.requires_grad for p in student.teacher.parameters())
    assert student.head.weight.requires_grad
    student.train()
    assert student.training and student.head.training
    assert not student.teacher.training
    assert not any(m.training for m in student.teacher.model.modules())


def test_checkpoints_exclude_teacher(vit_parts):
    model, tokenizer, name = copy.deepcopy(vit_parts)
    student = Student(CLIPTeacher(model, tokenizer, name=name))
    sd = student.state_dict()
    assert set(sd) == {"head.weight", "head.bias"}
    assert not any(k.startswith("teacher") for k in sd._metadata)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = Student(CLIPTeacher(*random_clip_model(TINY_VIT, seed=1)[:2]))
    # strict loading needs no teacher keys, and teacher keys in a checkpoint are ignored
    result = student.load_state_dict(other.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(student.head.weight, other.head.weight)
    stale = dict(other.state_dict())
    stale["teacher.model.logit_scale"] = torch.tensor(123.0)
    student.load_state_dict(stale, strict=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a missing student key is still reported
    with pytest.raises(RuntimeError, match="head.bias"):
        student.load_state_dict({"head.weight": other.head.weight}, strict=True)
    # the CLIP weights stay reachable
    assert "visual.proj" in student.teacher.model.state_dict()


def test_pixel_mean_std_from_model(vit_teacher):
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN) * 255
    std = torch.tensor(open_clip.OPENAI_DATASET_STD) * 255
    assert vit_teacher.pixel_mean.shape == (3, 1, 1)
    assert torch.allclose(vit_teacher.pixel_mean.flatten(), mean)
    assert torch.allclose(vit_teacher.pixel_std.flatten(), std)
    assert (vit_teacher.embed_dim, vit_teacher.patch_size, vit_teacher.image_size) == (
        32,
        16,
        (64, 64),
    )


def test_bad_precision(vit_parts):
    with pytest.raises(ValueError, match="'int8'"):
        CLIPTeacher(vit_parts[0], vit_parts[1], precision="int8")


def test_half_precision_is_ignored_on_cpu(vit_parts, vit_teacher):
    bf16 = CLIPTeacher(vit_parts[0], vit_parts[1], name=vit_parts[2], precision="bf16")
    images = random_image_batch(1, 48, 80)
    assert torch.equal(bf16.dense_embeddings(images), vit_teacher.dense_embeddings(images))
    assert torch.equal(bf16.encode_image(images), vit_teacher.encode_image(images))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_on_cuda_close_to_fp32(vit_parts, precision):
    model, tokenizer, name = copy.deepcopy(vit_parts)
    fp32 = CLIPTeacher(model, tokenizer, name=name).cuda()
    half = CLIPTeacher(model, tokenizer, name=name, precision=precision).cuda()
    images = random_image_batch(2, 96, 128).cuda()
    ref, got = fp32.dense_embeddings(images), half.dense_embeddings(images)
    assert got.dtype == torch.float32 and got.device.type == "cuda"
    assert (ref * got).sum(dim=1).min() > 0.99  # cosine similarity per location
    assert (fp32.encode_image(images) * half.encode_image(images)).sum(dim=1).min() > 0.99


def test_prompt_ensembling_matches_manual(vit_teacher):
    names = ["cat", "traffic light"]
    emb = vit_teacher.encode_text(names, TEMPLATES)
    model, tokenizer = vit_teacher.model, vit_teacher.tokenizer
    expected = []
    with torch.no_grad():
        for name in names:
            per_template = [
                F.normalize(model.encode_text(tokenizer([t.format(name)]))[0], dim=-1)
                for t in TEMPLATES
            ]
            expected.append(F.normalize(torch.stack(per_template).mean(0), dim=-1))
    expected = torch.stack(expected)
    assert emb.shape == (2, 32) and emb.dtype == torch.float32
    assert torch.allclose(emb, expected, atol=1e-5)
    # one template: the plain normalised prompt embedding
    single = vit_teacher.encode_text(["cat"], TEMPLATES[:1])
    with torch.no_grad():
        ref = F.normalize(model.encode_text(tokenizer([TEMPLATES[0].format("cat")])), dim=-1)
    assert torch.allclose(single, ref, atol=1e-5)


def test_text_cache_on_disk_and_in_memory(vit_parts, tmp_path):
    model, tokenizer, name = vit_parts
    names = ["cat", "dog", "sky"]
    calls, handle = _count_text_forwards(model)
    try:
        first = CLIPTeacher(model, tokenizer, name=name, cache_dir=tmp_path)
        emb = first.encode_text(names, TEMPLATES)
        assert len(calls) > 0
        files = list((tmp_path / "text_embeddings").iterdir())
        assert len(files) == 1 and files[0].suffix == ".pt"  # no temporary files left

        calls.clear()
        second = CLIPTeacher(model, tokenizer, name=name, cache_dir=tmp_path)
        assert torch.equal(second.encode_text(names, TEMPLATES), emb)
        assert calls == []

        files[0].unlink()  # the in-memory memo answers without the file
        assert torch.equal(second.encode_text(names, TEMPLATES), emb)
        assert calls == []

        # other names, order or templates: a new entry, computed
        second.encode_text(names[::-1], TEMPLATES)
        assert len(calls) > 0
        calls.clear()
        second.encode_text(names, TEMPLATES[:2])
        assert len(calls) > 0
    finally:
        handle.remove()


def test_the_memo_keeps_the_most_recent_vocabularies(vit_parts, monkeypatch):
    """A service answering users' vocabularies held every one it ever saw (+201 MiB for
    1,500 vocabularies of 50 names); the memo keeps the last TEXT_MEMO_ROWS names' rows,
    recently used first to stay, however many vocabularies they make (FSS-1000 trains on
    520 two-name ones)."""
    monkeypatch.setattr(teacher_module, "TEXT_MEMO_ROWS", 4)
    model, tokenizer, name = vit_parts
    teacher = CLIPTeacher(model, tokenizer, name=name)  # no disk cache: the memo alone
    calls, handle = _count_text_forwards(model)
    try:
        first = teacher.encode_text(["cat"], TEMPLATES)
        for words in (["dog"], ["sky", "sea"], ["cat"], ["sun"]):  # "cat" again: "dog" oldest
            teacher.encode_text(words, TEMPLATES)
        assert sum(len(e) for e in teacher._text_memo.values()) == 4
        calls.clear()
        assert torch.equal(teacher.encode_text(["cat"], TEMPLATES), first)
        assert calls == []  # kept
        teacher.encode_text(["dog"], TEMPLATES)
        assert len(calls) > 0  # dropped, computed again
        big = teacher.encode_text(["a", "b", "c", "d", "e"], TEMPLATES)  # larger than the bound
        assert list(teacher._text_memo.values())[-1].shape == big.shape
        assert len(teacher._text_memo) == 1  # the newest stays alone
    finally:
        handle.remove()


def test_an_unwritable_cache_folder_warns_once_and_embeds(vit_parts, tmp_path, caplog):
    """A read-only or full cache folder made every new vocabulary fail."""
    model, tokenizer, name = vit_parts
    (tmp_path / "text_embeddings").write_text("a file where the folder should be")
    teacher = CLIPTeacher(model, tokenizer, name=name, cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        a = teacher.encode_text(["cat"], TEMPLATES)
        b = teacher.encode_text(["dog"], TEMPLATES)
    assert a.shape == b.shape == (1, teacher.embed_dim)
    assert caplog.text.count("Cannot write the text-embedding cache") == 1


def test_returned_embeddings_do_not_alias_the_cache(vit_teacher):
    emb = vit_teacher.encode_text(["cat"], TEMPLATES)
    emb.zero_()
    assert vit_teacher.encode_text(["cat"], TEMPLATES).abs().sum() > 0


def test_corrupt_cache_file_is_recomputed(vit_parts, tmp_path, caplog):
    model, tokenizer, name = vit_parts
    teacher = CLIPTeacher(model, tokenizer, name=name, cache_dir=tmp_path)
    emb = teacher.encode_text(["cat"], TEMPLATES)
    (path,) = (tmp_path / "text_embeddings").iterdir()
    path.write_bytes(b"not a torch file")
    fresh = CLIPTeacher(model, tokenizer, name=name, cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        again = fresh.encode_text(["cat"], TEMPLATES)
    assert "unreadable" in caplog.text
    assert torch.allclose(again, emb, atol=1e-6)
    assert torch.load(path, weights_only=True)["names"] == ["cat"]


def test_fingerprint_follows_weights(vit_parts):
    model, tokenizer, name = vit_parts
    same = random_clip_model(TINY_VIT, seed=0)[0]
    other = random_clip_model(TINY_VIT, seed=1)[0]
    fp = CLIPTeacher(model, tokenizer, name=name).fingerprint
    assert len(fp) == 64
    assert CLIPTeacher(same, tokenizer, name=name).fingerprint == fp
    assert CLIPTeacher(other, tokenizer, name=name).fingerprint != fp
    assert CLIPTeacher(same, tokenizer, name=name, pretrained="some_tag").fingerprint != fp


def test_empty_vocabulary(vit_teacher):
    assert vit_teacher.encode_text([], TEMPLATES).shape == (0, 32)


def test_bad_names_and_templates(vit_teacher):
    with pytest.raises(ValueError, match="string 'cat'"):
        vit_teacher.encode_text("cat", TEMPLATES)
    with pytest.raises(ValueError, match="class name 1"):
        vit_teacher.encode_text(["cat", " "], TEMPLATES)
    with pytest.raises(ValueError, match="a photo"):
        vit_teacher.encode_text(["cat"], ["a photo"])


def test_encode_image_matches_model(vit_teacher):
    images = random_image_batch(2, 64, 64)
    emb = vit_teacher.encode_image(images)
    x = (images - vit_teacher.pixel_mean) / vit_teacher.pixel_std
    with torch.no_grad():
        ref = F.normalize(vit_teacher.model.encode_image(x), dim=-1)
    assert emb.shape == (2, 32)
    assert torch.allclose(emb, ref, atol=1e-5)
    # other sizes are resized to the model's input size (bicubic, antialiased)
    big = F.interpolate(images, size=(96, 128), mode="bilinear", align_corners=False)
    assert vit_teacher.encode_image(big).shape == (2, 32)
    with pytest.raises(ValueError, match=r"\(2, 1, 64, 64\)"):
        vit_teacher.encode_image(images[:, :1])


def test_outputs_usable_in_autograd(vit_teacher):
    weight = torch.ones(32, requires_grad=True)
    text = vit_teacher.encode_text(["cat"], TEMPLATES)
    dense = vit_teacher.dense_embeddings(random_image_batch(1, 64, 64))
    loss = (text @ weight).sum() + (dense * weight[None, :, None, None]).sum()
    loss.backward()
    assert weight.grad is not None and not text.is_inference()


def test_detectron2_checkpointer_round_trip(vit_parts, tmp_path, caplog):
    from detectron2.checkpoint import DetectionCheckpointer

    model, tokenizer, name = vit_parts
    student = Student(CLIPTeacher(model, tokenizer, name=name))
    DetectionCheckpointer(student, save_dir=str(tmp_path)).save("model_final")
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]
    assert set(saved) == {"head.weight", "head.bias"}
    fresh = Student(CLIPTeacher(model, tokenizer, name=name))
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(fresh).load(str(tmp_path / "model_final.pth"))
    assert "teacher" not in caplog.text
    assert torch.equal(fresh.head.weight, student.head.weight)


def test_a_timm_tower_teacher_embeds_images_and_text_but_not_pixels(tmp_path):
    # open_clip's TimmModel towers (ConvNeXt CLIPs) have no output_dim: the embedding size
    # comes from the text projection; dense embeddings name the towers they need
    config = json.loads(TINY_VIT.read_text())
    config["embed_dim"] = 24
    config["vision_cfg"] = {
        "timm_model_name": "convnext_atto",
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear",
        "image_size": 64,
    }
    path = tmp_path / "tiny_convnext.json"
    path.write_text(json.dumps(config))
    model, tokenizer, name = random_clip_model(path)
    teacher = CLIPTeacher(model, tokenizer, name=name)
    images = random_image_batch(2, 64, 64)
    assert teacher.embed_dim == 24
    assert teacher.encode_image(images).shape == (2, 24)
    assert teacher.encode_text(["a cat", "a dog"], ["a photo of a {}."]).shape == (2, 24)
    with pytest.raises(NotImplementedError, match="TimmModel"):
        teacher.dense_embeddings(images)
