"""tools/dump_text_embeddings.py and ovseg.clip.export: the file holds the teacher's own text
embeddings."""

import subprocess
import sys

import pytest
import torch
from ovseg_testing import ROOT, load_script, subprocess_env

from ovseg.clip import build_clip_teacher
from ovseg.clip.export import export_text_embeddings
from ovseg.engine.defaults import load_config

TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.CLIP.MODEL_NAME", str(ROOT / "configs/clip/tiny_vit.json"),
    "MODEL.CLIP.PRETRAINED", "",
]  # fmt: skip
CONFIG = str(ROOT / "configs/voc/maskclip/maskclip_vitb16_bs1.yaml")


def test_command_line_writes_the_file(tmp_path):
    out = tmp_path / "text.pt"
    proc = subprocess.run(
        [sys.executable, "tools/dump_text_embeddings.py", "--config-file", CONFIG,
         "--vocabulary", "cat,dog,grass", "--templates", "single", "--output", str(out),
         *TINY, "MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache")],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"embeddings of 3 names to {out}" in proc.stdout
    data = torch.load(out)
    assert data["names"] == ["cat", "dog", "grass"]
    assert data["templates"] == ["a photo of a {}."]
    emb = data["embeddings"]
    assert emb.shape[0] == 3
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_dump_matches_teacher(tmp_path):
    cfg = load_config(CONFIG, TINY + ["MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache")])
    torch.manual_seed(0)  # the tiny CLIP is randomly initialised: seed both builds alike
    emb = export_text_embeddings(cfg, "cat,dog,grass", tmp_path / "text.pt", "single")
    data = torch.load(tmp_path / "text.pt")
    assert torch.equal(data["embeddings"], emb)
    # the same weights give the same fingerprint and embeddings
    torch.manual_seed(0)
    teacher = build_clip_teacher(cfg)
    assert teacher.fingerprint == data["fingerprint"]
    expected = teacher.encode_text(["cat", "dog", "grass"], ["a photo of a {}."])
    assert torch.allclose(emb, expected, atol=1e-6)


def test_builtin_vocabulary_and_errors(tmp_path):
    cfg = load_config(CONFIG, TINY)
    export_text_embeddings(cfg, "voc20", tmp_path / "v.pt")
    assert len(torch.load(tmp_path / "v.pt")["names"]) == 20
    with pytest.raises(ValueError, match="is a folder"):
        export_text_embeddings(cfg, "voc20", tmp_path)
    with pytest.raises(ValueError, match="[Dd]uplicate"):
        export_text_embeddings(cfg, "cat,cat", tmp_path / "d.pt")


TOY = str(ROOT / "configs/toy/maskclip.yaml")


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--vocabulary", "voc2"], "Unknown vocabulary 'voc2'"),
        (["--vocabulary", ", ,"], "is empty"),
        (["--vocabulary", "voc20", "MODEL.CLIP.MODLE_NAME", "x"], "did you mean MODEL.CLIP."),
        (
            ["--vocabulary", "voc20", "MODEL.CLIP.PRETRAINED", "checkpoints/toy_clip_vit.pt"],
            "could not be loaded into MODEL.CLIP.MODEL_NAME 'toy_rn'",
        ),
        (
            ["--vocabulary", "voc20", "MODEL.CLIP.PRETRAINED", TOY],
            "it is not a readable PyTorch checkpoint",
        ),
    ],
)
def test_user_mistakes_end_in_one_error_line_and_no_file(tmp_path, capsys, argv, says):
    tool = load_script("tools/dump_text_embeddings.py")
    out = tmp_path / "text.pt"
    cache = ["MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache")]
    argv = ["--config-file", TOY, "--output", str(out), *argv]
    assert tool.main(argv + cache) == 2
    err = capsys.readouterr().err
    assert err.startswith("dump_text_embeddings.py: error: ") and says in err, err
    assert "Traceback" not in err and not out.exists()


def test_offline_clip_weights_end_in_one_error_line(tmp_path, capsys, monkeypatch):
    """The README's command for a real CLIP, offline: the download hint, not a traceback."""
    import open_clip.pretrained

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    tool = load_script("tools/dump_text_embeddings.py")
    out = tmp_path / "ade847.pt"
    config = str(ROOT / "configs/ade20k/maskclip/maskclip_vitb16_bs1.yaml")
    argv = ["--config-file", config, "--vocabulary", "ade847", "--output", str(out)]
    assert tool.main(argv + ["MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dump_text_embeddings.py: error: Could not get the weights"), err
    assert "MODEL.CLIP.PRETRAINED" in err and "Network is unreachable" in err
    assert not out.exists()


def test_dump_writes_the_configs_classifier_rows(tmp_path, monkeypatch):
    """The file's rows are what the config's models classify with: the VOC MaskCLIP config's
    official word "airplane" for "aeroplane" (MODEL.CLIP.PROMPT_NAMES maskclip_voc20), a class
    with synonyms as the normalised mean of its words; and the words are what the teacher
    then caches, so a model scoring the vocabulary under SYNONYM_MERGE max computes nothing.
    (The dump embedded "aeroplane" and the whole "road, route", text no model embeds.)"""
    from detectron2.modeling import build_model

    import ovseg.clip.export as export

    cfg = load_config(CONFIG, TINY + ["MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache")])
    cfg.MODEL.CLIP.TEMPLATES = "single"
    assert cfg.MODEL.CLIP.PROMPT_NAMES == "maskclip_voc20"
    model = build_model(cfg).eval()
    monkeypatch.setattr(export, "build_clip_teacher", lambda cfg: model.teacher)
    names = ("aeroplane", "road, route", "sky")
    emb = export_text_embeddings(cfg, "aeroplane; road, route; sky", tmp_path / "t.pt")
    data = torch.load(tmp_path / "t.pt")
    assert data["names"] == list(names)
    assert data["prompts"] == ["airplane", "road, route", "sky"]
    with torch.no_grad():
        assert torch.allclose(emb, model.text_embeddings(names).cpu(), atol=1e-6)

    def no_new_text(*args):
        raise AssertionError("the dump did not compute the words a model asks for")

    monkeypatch.setattr(model.teacher, "_compute_text", no_new_text)
    model.teacher._text_memo.clear()  # from the disk cache the dump wrote
    words, _ = model.scored_words(names)
    assert tuple(words) == ("airplane", "road", "route", "sky")
    with torch.no_grad():
        model.text_embeddings(words)
